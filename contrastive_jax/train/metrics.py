"""Metrics out of a run: metrics.jsonl, TensorBoard events, and a progress bar."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping

import jax
import numpy as np
import tqdm


def _scalar(value) -> float | int:
    """A metric as a JSON number; counters (integer values) stay integers: 113936, not
    113936.0, so scripts that sum or compare them get exact ints back."""
    array = np.asarray(value)
    return int(array) if array.dtype.kind in "iub" else float(array)


class MetricsWriter:
    """Writes one JSON object per line (with `step`) and TensorBoard scalars.

    Only process 0 writes, so a multi-host run leaves one copy of everything.
    """

    def __init__(self, workdir: str, *, enabled: bool | None = None):
        self.enabled = jax.process_index() == 0 if enabled is None else enabled
        self._jsonl = None
        self._tb = None
        if self.enabled:
            os.makedirs(workdir, exist_ok=True)
            self._jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a", encoding="utf-8")
            import tensorflow as tf  # TensorBoard's own event writer

            self._tb = tf.summary.create_file_writer(os.path.join(workdir, "tensorboard"))

    def write(self, step: int, metrics: Mapping[str, float | int]) -> None:
        if not self.enabled:
            return
        values = {k: _scalar(v) for k, v in metrics.items()}
        record = {"step": int(step)}
        record.update({k: (v if math.isfinite(v) else str(v)) for k, v in values.items()})
        self._jsonl.write(json.dumps(record) + "\n")
        self._jsonl.flush()
        import tensorflow as tf

        with self._tb.as_default(step=int(step)):
            for k, v in values.items():
                tf.summary.scalar(k, v)
        self._tb.flush()

    def close(self) -> None:
        if self._jsonl:
            self._jsonl.close()
            self._tb.close()
            self._jsonl = self._tb = None


def progress_bar(total_steps: int, initial_step: int, batch_size: int, enabled: bool):
    """Counts examples so the bar shows examples/s and an ETA for the whole run."""
    return tqdm.tqdm(
        total=total_steps * batch_size,
        initial=initial_step * batch_size,
        unit="ex",
        unit_scale=True,
        dynamic_ncols=True,
        disable=not enabled or jax.process_index() != 0,
        smoothing=0.1,
    )
