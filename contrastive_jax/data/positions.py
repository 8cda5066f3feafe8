"""Stream positions: where a process's stream of each source stands, so a resume can start
there without first counting an epoch.

A position is `epoch * STRIDE + served`: `served` elements of epoch `epoch` have been read,
counted by zipping each epoch with `of_epoch(epoch)` (no function per example), in raw
records (data/examples.py), so a resume skips them undecoded. Batches carry
"stream_position" int64 [S], per source the position after the batch's last example (0
where the batch has none of that source); positions only grow, so the running maximum over
the batches a run consumed is where its stream stands. Checkpoints store every process's
(train/loop.py). Without them, a resume past the first epoch has to count the usable
examples of an epoch, which with filters decodes the whole epoch.
"""

from __future__ import annotations

from collections.abc import Sequence

import tensorflow as tf

STRIDE = 2**40  # more elements than any process reads in one epoch
KEY = "stream_position"


def encode(epoch: tf.Tensor, served: tf.Tensor) -> tf.Tensor:
    return tf.cast(epoch, tf.int64) * STRIDE + tf.cast(served, tf.int64)


def of_epoch(epoch: tf.Tensor) -> tf.data.Dataset:
    """The positions of epoch `epoch`'s elements in order, to zip beside them: encode(epoch,
    1), encode(epoch, 2), ... (an enumerate, so no function runs per element)."""
    return tf.data.Dataset.range(encode(epoch, 1), encode(epoch + 1, 0))


def decode(position: int) -> tuple[int, int]:
    """(epoch, elements of it already read)."""
    return divmod(int(position), STRIDE)


def resume_points(positions: Sequence[int] | None, count: int) -> list[tuple[int, int]] | None:
    """[(epoch, skip)] per source from saved positions; None if there are none (or not
    `count` of them: a different mix of sources) and the epoch must be counted instead."""
    if positions is None or len(positions) != count:
        return None
    return [decode(p) for p in positions]
