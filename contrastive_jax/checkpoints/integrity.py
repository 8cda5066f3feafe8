"""Telling a damaged checkpoint from one of another run, and setting damaged ones aside.

checkpoints/store.py uses these: a checkpoint that fails to read or fails its fingerprint
check becomes an `Unreadable` (step, where, cause), is moved to `checkpoints/corrupt/`
(never deleted; orbax lists only step-named directories) and the resume tries the next
older one.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys

import jax
from jax.experimental import multihost_utils

from contrastive_jax import paths
from contrastive_jax.errors import CheckpointError

log = logging.getLogger(__name__)

# What reading a damaged checkpoint raises: tensorstore's errors (ValueError with a status
# such as DATA_LOSS, or orbax's bare Exception around them), JSON that no longer parses,
# metadata missing a key, an OSError. Anything else (a bug) keeps its traceback.
READ_ERRORS = (ValueError, KeyError, OSError, json.JSONDecodeError)
_STATUS = re.compile(r"^[A-Z][A-Z_]+: ")
_FILE = re.compile(r'local file "([^"]+)"')
_LEAF = re.compile(r'Error reading "([^"/]+)')


class Unreadable(Exception):  # noqa: N818 - an outcome the restore handles, not an error
    """Checkpoint `step` failed to read or failed its check; `where` is a file or leaf."""

    def __init__(self, step: int, where: str, cause: str):
        super().__init__(f"checkpoint {step}: {where}: {cause}")
        self.step, self.where, self.cause = step, where, cause


def is_read_error(e: BaseException) -> bool:
    return type(e) is Exception or isinstance(e, READ_ERRORS)


def _chain(e: BaseException) -> list[BaseException]:
    out = [e]
    while out[-1].__cause__ is not None and len(out) < 10:
        out.append(out[-1].__cause__)
    return out


def describe(step: int, e: BaseException, directory: str,
             where: str = "state/") -> Unreadable:
    """The file (or leaf; else `where`) and the one-line cause of a read failure of
    checkpoint `step`, whose directory is `directory`."""
    chain = _chain(e)
    root = next((x for x in chain if _STATUS.match(str(x))), chain[-1])
    text = " ".join(str(x) for x in chain)
    files = [f for f in _FILE.findall(text) if not f.endswith("/")]  # not the database dir
    leaf = _LEAF.search(text)
    if files and not paths.is_url(directory):
        where = os.path.relpath(files[-1], directory)
    elif leaf:
        where = f"leaf {leaf.group(1)}"
    line = (str(root).strip().splitlines() or [""])[0].split(" [tensorstore_spec")[0]
    # tensorstore nests "Error opening ... at local file "...": <the actual cause>".
    status = _STATUS.match(line)
    cause = re.split(r'local file "[^"]+": ', line)[-1]
    if status and not cause.startswith(status.group(0)):
        cause = status.group(0) + cause
    if isinstance(root, KeyError):
        cause = f"missing key {cause}"
    return Unreadable(step, where, f"{type(root).__name__}: {cause[:200]}")


def looks_like_mismatch(e: BaseException) -> bool:
    """An old checkpoint (no fingerprints to compare trees with) refused as another tree
    rather than damaged: orbax's message for a restore target of another structure."""
    return any("tree structures do not match" in str(x) for x in _chain(e))


def move_aside(directory: str, kind: str, reasons: dict[int, str]) -> None:
    """Moves each step `directory/<step>` of `reasons` to `directory/<kind>/<step>` (`.2`,
    `.3`, ... if taken), with a warning: its reason and where it went. Process 0 moves;
    the others wait for it."""
    if not reasons:
        return
    if jax.process_index() == 0:
        for step, reason in reasons.items():
            target_dir = paths.join(directory, kind)
            target, n = paths.join(target_dir, str(step)), 1
            while paths.exists(target):
                n += 1
                target = paths.join(target_dir, f"{step}.{n}")
            try:
                # On an object store a move is copy-then-delete, not atomic: a crash midway
                # leaves a copy under kind/ (never read) and perhaps part of the source,
                # which fails its read again on the next resume and is set aside again.
                paths.makedirs(target_dir)
                paths.move(paths.join(directory, str(step)), target)
            except OSError as e:
                raise CheckpointError(f"{reason}; cannot move it to {kind}/: {e}") from e
            log.warning("%s; moved to %s", reason, target)
    multihost_utils.sync_global_devices(f"checkpoints moved to {kind}")


_hook_installed = False


def quiet_abandoned_reads() -> None:
    """Silences "RuntimeError: Event loop is closed" from reads orbax abandoned.

    When one read of a restore fails, orbax's asyncio.gather returns at once and its event
    loop closes; tensorstore still completes the other reads and reports each completion
    to the closed loop, which Python prints as an unraisable exception: dozens of
    tracebacks after the real error. Only that exception is dropped; any other goes to the
    previous hook.
    """
    global _hook_installed
    if _hook_installed:
        return
    previous = sys.unraisablehook

    def hook(unraisable) -> None:
        value, tb = unraisable.exc_value, unraisable.exc_traceback
        while tb is not None and tb.tb_next is not None:
            tb = tb.tb_next
        if (isinstance(value, RuntimeError) and str(value) == "Event loop is closed"
                and tb is not None and tb.tb_frame.f_code.co_name == "_check_closed"):
            return
        previous(unraisable)

    sys.unraisablehook = hook
    logging.getLogger("asyncio").addFilter(_drop_unretrieved_read_errors)
    _hook_installed = True


def _drop_unretrieved_read_errors(record: logging.LogRecord) -> bool:
    """asyncio's "Future exception was never retrieved" for a read of a restore that
    orbax abandoned after another read had failed (that first failure is reported)."""
    if not record.getMessage().startswith("Future exception was never retrieved"):
        return True
    value = record.exc_info[1] if record.exc_info else None
    return not (isinstance(value, ValueError) and _STATUS.match(str(value)))
