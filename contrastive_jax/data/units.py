"""What each logical stream of a source reads (data/order.py): its units, as a table.

A source's units are its files (TFRecord, wds), its table rows (folder) or TFDS file
instructions. Logical stream s of L reads `units[s::L]` when there are at least L; a
source with fewer files than L shares each file between several streams, each taking
every m-th record of it (`file_parts`), so any L up to the number of records works.

The table holds every stream's units as padded arrays, so one tf.data function, traced
once, builds the stream of any stream index given as a tensor (`UnitTable.of`): a process
that serves 64 logical streams traces its pipeline once, not 64 times.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
import tensorflow as tf

from contrastive_jax.errors import DataError


@dataclasses.dataclass(frozen=True)
class UnitTable:
    """Per stream, its units: `fields[name][s, :counts[s]]`."""

    fields: dict[str, np.ndarray]  # name -> [L, U], padded
    counts: np.ndarray  # [L] int64

    @classmethod
    def build(cls, per_stream: Sequence[Sequence[tuple]], names: Sequence[str]
              ) -> UnitTable:
        """From each stream's list of units, a unit being a tuple of `names`' values."""
        width = max(1, max(len(units) for units in per_stream))
        fields = {}
        for i, name in enumerate(names):
            column = [[u[i] for u in units] for units in per_stream]
            pad = "" if any(isinstance(v, str) for c in column for v in c) else 0
            fields[name] = np.array([c + [pad] * (width - len(c)) for c in column],
                                    dtype=object if pad == "" else np.int64)
        counts = np.array([len(units) for units in per_stream], np.int64)
        return cls(fields, counts)

    @property
    def streams(self) -> int:
        return len(self.counts)

    def of(self, stream: int | tf.Tensor) -> dict[str, tf.Tensor]:
        """Stream `stream`'s units as tensors [n] (`stream` may be a tensor)."""
        n = tf.gather(tf.constant(self.counts), stream)
        return {name: tf.constant(v.astype(bytes) if v.dtype == object else v)[stream, :n]
                for name, v in self.fields.items()}

    def check(self, name: str, what: str) -> None:
        """DataError, in one line, if a stream has no unit."""
        empty = [s for s, n in enumerate(self.counts) if not n]
        if empty:
            raise DataError(f"{name}: {what} cannot feed {self.streams} logical streams "
                            f"('data.logical_streams'; stream {empty[0]} would read "
                            f"nothing): set it to at most {self.streams - len(empty)}")


FILE_FIELDS = ("path", "stride", "offset")


def file_parts(files: Sequence[str], streams: int) -> list[list[tuple[str, int, int]]]:
    """Per stream, its (file, stride, offset) units: files[s::L] whole (stride 1) when
    there are at least L files; else stream s reads file s % n, records j, j + m, ... with
    m the streams that share that file and j = s // n its place among them."""
    n = len(files)
    if n >= streams:
        return [[(f, 1, 0) for f in files[s::streams]] for s in range(streams)]
    return [[(files[s % n], len(range(s % n, streams, n)), s // n)] for s in range(streams)]
