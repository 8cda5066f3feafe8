"""NaFlex in the training stream (`data.naflex`): each image patchified at its own aspect
ratio, one budget of patches per global batch.

Global batch n uses budget `budgets[draw(seed, n)]`, a stateless draw of (seed, n) by
`weights`: the same on every process and every logical stream (all of whose n-th chunks
make up global batch n, data/order.py), so a global batch has one shape and the step
compiles once per budget. The draw is a function of the batch number only: which examples
a stream serves does not depend on it, and a resume at batch n draws as the unbroken run.
(Batch n is examples read / examples per step: the step, unless a resume changed
`train.batch_size`.)

The batch carries PATCHES [b, N, p*p*C] float32 (already in `data.value_range`), MASK
[b, N] int32 and SHAPE [b, 2] int32 (each image's patch grid); ENLARGED [b] int32 flags an
image smaller than one patch (enlarged to one patch by `naflex_patches`), which the loop
counts (train/stream_progress.py).
"""

from __future__ import annotations

from collections.abc import Sequence

import ml_collections
import numpy as np
import tensorflow as tf

from contrastive_jax.data.naflex import naflex_patches
from contrastive_jax.data.schema import NAFLEX_ENLARGED as ENLARGED
from contrastive_jax.data.schema import NAFLEX_MASK as MASK
from contrastive_jax.data.schema import NAFLEX_PATCHES as PATCHES
from contrastive_jax.data.schema import NAFLEX_SHAPE as SHAPE

KEYS = (PATCHES, MASK, SHAPE, ENLARGED)
_DRAW_STREAM = 7_340_033  # keeps the budget draws apart from the run's other seeded draws


def enabled(data_config: ml_collections.ConfigDict) -> bool:
    """Whether the run trains on patch sequences (`data.naflex.budgets` set)."""
    naflex = data_config.get("naflex")
    return bool(naflex and naflex.budgets)


def model_patch(image_config: ml_collections.ConfigDict) -> int:
    """The model's (square) patch side, `model.image.patch_size`."""
    size = image_config.patch_size
    return int(size if isinstance(size, int) else size[0])


def budgets_and_weights(data_config: ml_collections.ConfigDict
                        ) -> tuple[list[int], list[float]]:
    """`data.naflex.budgets` and their weights (equal when `weights` is empty)."""
    cfg = data_config.naflex
    budgets = [int(b) for b in cfg.budgets]
    weights = [float(w) for w in cfg.weights] or [1.0] * len(budgets)
    return budgets, weights


def budget_index(weights: Sequence[float], seed: int | tf.Tensor,
                 batch: int | tf.Tensor) -> tf.Tensor:
    """int64 index into the budgets of global batch `batch`: a stateless draw of (seed,
    batch) by `weights`."""
    if len(weights) == 1:
        return tf.constant(0, tf.int64)
    total = sum(weights)
    logits = tf.math.log(tf.constant([[w / total for w in weights]], tf.float32))
    key = tf.stack([tf.cast(seed, tf.int64) * 8191 + _DRAW_STREAM, tf.cast(batch, tf.int64)])
    return tf.random.stateless_categorical(logits, 1, seed=key, dtype=tf.int64)[0, 0]


def budget_schedule(data_config: ml_collections.ConfigDict, seed: int, first: int,
                    count: int) -> np.ndarray:
    """The budgets of global batches [first, first + count), as the stream draws them."""
    budgets, weights = budgets_and_weights(data_config)
    draws = tf.data.Dataset.range(first, first + count).map(
        lambda n: budget_index(weights, seed, n))
    return np.asarray(budgets)[np.fromiter(draws.as_numpy_iterator(), np.int64, count)]


def patchify_example(example: dict[str, tf.Tensor], index: tf.Tensor, budgets: Sequence[int],
                     patch: int, value_range: Sequence[float]) -> dict[str, tf.Tensor]:
    """An example's uint8 [H, W, C] "image" -> the KEYS at budget `budgets[index]`."""
    image = example["image"]
    shape = tf.shape(image)
    branches = [lambda b=b: naflex_patches(image, patch, b, value_range) for b in budgets]
    out = tf.switch_case(tf.cast(index, tf.int32), branches) if len(budgets) > 1 else (
        branches[0]())
    small = tf.logical_or(shape[0] < patch, shape[1] < patch)
    rest = {k: v for k, v in example.items() if k != "image"}
    return {**rest, PATCHES: out["patches"], MASK: out["mask"], SHAPE: out["shape"],
            ENLARGED: tf.cast(small, tf.int32)}


def patchified(ds: tf.data.Dataset, data_config: ml_collections.ConfigDict, *, seed: int,
               position: int, chunk: int, patch: int) -> tf.data.Dataset:
    """One logical stream's examples, from its `position`-th, served in batches of `chunk`
    (batch n holds its examples [n * chunk, (n + 1) * chunk)), patchified at batch n's
    budget."""
    budgets, weights = budgets_and_weights(data_config)
    value_range = tuple(float(v) for v in data_config.value_range)

    def fn(p, example):
        index = budget_index(weights, seed, p // chunk)
        return patchify_example(example, index, budgets, patch, value_range)

    return ds.enumerate(start=position).map(fn, num_parallel_calls=tf.data.AUTOTUNE)
