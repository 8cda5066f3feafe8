"""Metrics out of a run: metrics.jsonl, TensorBoard events, and a progress bar."""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from collections.abc import Mapping

import jax
import numpy as np
import tqdm

from contrastive_jax import paths


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
            paths.makedirs(workdir)
            path = paths.join(workdir, "metrics.jsonl")
            # An object store has no append: the lines are kept and the object rewritten.
            self._jsonl = (_RewrittenObject(path) if paths.is_url(path)
                           else open(path, "a", encoding="utf-8"))  # noqa: SIM115
            self._tb = _TensorBoard(paths.join(workdir, "tensorboard"))

    def write(self, step: int, metrics: Mapping[str, float | int]) -> None:
        if not self.enabled:
            return
        values = {k: _scalar(v) for k, v in metrics.items()}
        record = {"step": int(step)}
        record.update({k: (v if math.isfinite(v) else str(v)) for k, v in values.items()})
        self._jsonl.write(json.dumps(record) + "\n")
        self._jsonl.flush()
        self._tb.write(int(step), values)

    def close(self) -> None:
        if self._jsonl:
            self._jsonl.close()
            self._tb.close()
            self._jsonl = self._tb = None


class _RewrittenObject:
    """metrics.jsonl on an object store: the earlier content plus this run's lines, the
    whole object rewritten on every flush (a write of one object is all-or-nothing)."""

    def __init__(self, path: str):
        self.path = path
        self._text = paths.read_text(path) if paths.exists(path) else ""

    def write(self, text: str) -> None:
        self._text += text

    def flush(self) -> None:
        paths.write_text(self.path, self._text)

    def close(self) -> None:
        self.flush()


class _TensorBoard:
    """TensorBoard scalars under `directory`. TensorFlow writes the event files; for an
    object-store directory it writes them to a local cache (`paths.cache_dir`) and each
    flush copies them to `directory`, because TF's own GCS client is not the one the
    project's gs:// paths use (see paths.py). The cache is removed on close."""

    def __init__(self, directory: str):
        import tensorflow as tf  # TensorBoard's own event writer

        self.directory = directory
        self._local = directory
        if paths.is_url(directory):
            self._local = tempfile.mkdtemp(dir=paths.cache_dir("tensorboard"))
        self._writer = tf.summary.create_file_writer(self._local)

    def write(self, step: int, values: Mapping[str, float | int]) -> None:
        import tensorflow as tf

        with self._writer.as_default(step=step):
            for k, v in values.items():
                tf.summary.scalar(k, v)
        self._writer.flush()
        self._upload()

    def close(self) -> None:
        self._writer.close()
        self._upload()
        if self._local != self.directory:
            shutil.rmtree(self._local, ignore_errors=True)

    def _upload(self) -> None:
        if self._local != self.directory:
            for name in os.listdir(self._local):
                paths.copy(os.path.join(self._local, name), paths.join(self.directory, name))


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
