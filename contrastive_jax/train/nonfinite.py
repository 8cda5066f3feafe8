"""`train.nonfinite`: what the loop does with a step whose loss or gradient is not finite.

The step itself already dropped that update on device (train/step.py), so the state stays
finite either way. `skip` counts such steps (`train/nonfinite_steps`) and stops after
`train.nonfinite_limit` in a row; `stop` stops at the first. Either stop is a one-line
error naming the step.

Reading a step's flag waits for that step. The guard reads each step's flag only after
the next step has been dispatched, so the device always has work queued: no host sync per
step beyond the one the next batch's dispatch already allows.
"""

from __future__ import annotations

import logging

import jax

from contrastive_jax.errors import UserError

log = logging.getLogger(__name__)

MODES = ("skip", "stop")


class NonFiniteError(UserError, FloatingPointError):
    """Training stopped on a non-finite loss or gradient; one line naming the step."""


class NonfiniteGuard:
    """Counts dropped updates from each step's flag and stops as `mode` says."""

    def __init__(self, mode: str, limit: int, total: int = 0):
        self.mode, self.limit = mode, limit
        self.total = total  # dropped updates in the whole run (resumed from the checkpoint)
        self.streak = 0
        self._pending: tuple[int, jax.Array] | None = None

    def push(self, step: int, flag: jax.Array) -> None:
        """Takes step `step`'s flag (a device scalar, 1 = dropped) and checks the previous
        step's, which has finished or is about to."""
        previous, self._pending = self._pending, (step, flag)
        if previous is not None:
            self._check(*previous)

    def flush(self) -> None:
        """Checks the latest step too (a host sync): before a save, a log line, the end."""
        if self._pending is not None:
            pending, self._pending = self._pending, None
            self._check(*pending)

    def _check(self, step: int, flag: jax.Array) -> None:
        if not int(flag):
            self.streak = 0
            return
        self.total += 1
        self.streak += 1
        if self.mode == "stop":
            raise NonFiniteError(
                f"train/loss or its gradient is not finite at step {step} "
                "(train.nonfinite=stop); no checkpoint holds that step or a later one")
        log.warning("step %d: train/loss or its gradient is not finite; update dropped "
                    "(%d in a row)", step, self.streak)
        if self.streak >= self.limit:
            raise NonFiniteError(
                f"train/loss or its gradient was not finite for {self.streak} steps in a "
                f"row, up to step {step} (train.nonfinite_limit={self.limit}); their "
                "updates were dropped, so every checkpoint holds finite weights")
