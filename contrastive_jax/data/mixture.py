"""The seeded choice stream that mixes sources by weight, and how far each source got.

The choices are a fixed function of (weights, seed), drawn in blocks so that the first P
of them, which say how many examples each source served up to global position P, can be
counted cheaply on resume.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import tensorflow as tf

_MIX_BLOCK = 4096  # choices are drawn in blocks of this size (cheap to recount on resume)


def _choice_block(weights: Sequence[float], seed: int):
    logits = tf.math.log(tf.constant([w / sum(weights) for w in weights], tf.float32))[None]

    def block(j):
        return tf.random.stateless_categorical(logits, _MIX_BLOCK, seed=tf.stack(
            [tf.constant(seed * 131 + 17, tf.int64), j]), dtype=tf.int64)[0]  # fmt: skip

    return block


def mixture_choices(weights: Sequence[float], seed: int, start: int) -> tf.data.Dataset:
    """The infinite seeded stream of source indices, from its `start`-th element."""
    first, skip = divmod(start, _MIX_BLOCK)
    ds = tf.data.Dataset.range(first, np.iinfo(np.int64).max).map(_choice_block(weights, seed))
    return ds.unbatch().skip(skip)


def mixture_positions(weights: Sequence[float], seed: int, position: int) -> list[int]:
    """How many of the first `position` choices picked each source."""
    full, rest = divmod(position, _MIX_BLOCK)
    block = _choice_block(weights, seed)
    n = len(weights)
    counts = tf.data.Dataset.range(full).map(
        lambda j: tf.math.bincount(block(j), minlength=n, maxlength=n, dtype=tf.int64)
    ).reduce(tf.zeros([n], tf.int64), lambda a, b: a + b)  # fmt: skip
    counts += tf.math.bincount(block(tf.constant(full, tf.int64))[:rest], minlength=n,
                               maxlength=n, dtype=tf.int64)  # fmt: skip
    return [int(c) for c in counts.numpy()]
