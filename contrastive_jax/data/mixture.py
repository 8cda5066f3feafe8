"""The seeded choice stream that mixes sources by weight, and how far each source got.

The choices are a fixed function of (weights, seed), drawn in blocks so that the first P
of them, which say how many examples each source served up to global position P, can be
counted cheaply on resume.

`group` > 1 is ZeroVL's debiased sampling (Cui et al. 2022): one choice per group of
`group` consecutive examples (a batch), so that a batch's negatives all come from one
source and share its biases. Every process draws the same choice for its batch n, so a
global batch is one source too.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import tensorflow as tf

_MIX_BLOCK = 4096  # choices are drawn in blocks of this size (cheap to recount on resume)


def _choice_block(weights: Sequence[float], seed: int | tf.Tensor):
    logits = tf.math.log(tf.constant([w / sum(weights) for w in weights], tf.float32))[None]

    def block(j):
        return tf.random.stateless_categorical(logits, _MIX_BLOCK, seed=tf.stack(
            [tf.cast(seed, tf.int64) * 131 + 17, j]), dtype=tf.int64)[0]  # fmt: skip

    return block


def mixture_choices(weights: Sequence[float], seed: int | tf.Tensor, start: int,
                    group: int = 1) -> tf.data.Dataset:
    """The infinite seeded stream of source indices, one per example from its `start`-th;
    each choice holds for `group` examples in a row."""
    draw, within = divmod(start, group)
    first, skip = divmod(draw, _MIX_BLOCK)
    ds = tf.data.Dataset.range(first, np.iinfo(np.int64).max).map(_choice_block(weights, seed))
    ds = ds.unbatch().skip(skip)
    if group == 1:
        return ds
    return ds.map(lambda k: tf.fill([group], k)).unbatch().skip(within)


def mixture_positions(weights: Sequence[float], seed: int, position: int,
                      group: int = 1) -> list[int]:
    """How many of the first `position` examples each source served."""
    if not position:
        return [0] * len(weights)
    draws, within = divmod(position, group)
    counts = [c * group for c in _draw_counts(weights, seed, draws)]
    if within:  # part of the group of draw `draws` has been served
        block, index = divmod(draws, _MIX_BLOCK)
        counts[int(_choice_block(weights, seed)(tf.constant(block, tf.int64))[index])] += within
    return counts


def _draw_counts(weights: Sequence[float], seed: int, position: int) -> list[int]:
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
