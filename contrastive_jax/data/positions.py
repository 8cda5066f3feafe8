"""Stream positions: where a process's stream of each source stands, so a resume can start
there without first counting an epoch.

A position is `epoch * STRIDE + served`: `served` usable examples of epoch `epoch` have been
read. Batches carry "stream_position" int64 [S], per source the position after the batch's
last example (0 where the batch has none of that source); positions only grow, so the
running maximum over the batches a run consumed is where its stream stands. Checkpoints
store every process's (train/loop.py). Without them, a resume past the first epoch has to
count the usable examples of an epoch, which with filters decodes the whole epoch.
"""

from __future__ import annotations

from collections.abc import Sequence

import tensorflow as tf

STRIDE = 2**40  # more usable examples than any process serves in one epoch
KEY = "stream_position"


def encode(epoch: tf.Tensor, served: tf.Tensor) -> tf.Tensor:
    return tf.cast(epoch, tf.int64) * STRIDE + tf.cast(served, tf.int64)


def decode(position: int) -> tuple[int, int]:
    """(epoch, usable examples of it already served)."""
    return divmod(int(position), STRIDE)


def tag_served(ds: tf.data.Dataset, first_epoch: int) -> tf.data.Dataset:
    """Adds KEY (a scalar) to examples that carry their "epoch": counts them per epoch.

    A sequential scan, for streams whose epochs are only known after filtering (data.sources,
    where bad records drop out after the epoch loop). Where the usable examples exist per
    epoch (the TFDS path), zip each epoch with a `tf.data.Dataset.range` from
    `encode(e, 1)` instead: no function per example.

    Applied before skipping to the resume offset, so the skipped examples are counted too.
    """
    def count(state, ex):
        epoch, served = state
        served = tf.where(tf.equal(ex["epoch"], epoch), served + 1, tf.constant(1, tf.int64))
        out = {k: v for k, v in ex.items() if k != "epoch"}
        return (ex["epoch"], served), {**out, KEY: encode(ex["epoch"], served)}

    return ds.scan((tf.constant(first_epoch, tf.int64), tf.constant(0, tf.int64)), count)


def resume_points(positions: Sequence[int] | None, count: int) -> list[tuple[int, int]] | None:
    """[(epoch, skip)] per source from saved positions; None if there are none (or not
    `count` of them: a different mix of sources) and the epoch must be counted instead."""
    if positions is None or len(positions) != count:
        return None
    return [decode(p) for p in positions]
