"""NaFlex in the training stream (`data.naflex`): each image patchified at its own aspect
ratio, one budget of patches per global batch.

Global batch n uses budget `budgets[draw(seed, n)]`, a stateless draw of (seed, n) by
`weights`: the same on every process and every logical stream (all of whose n-th chunks
make up global batch n, data/order.py), so a global batch has one shape and the step
compiles once per budget. The draw is a function of the batch number only: which examples
a stream serves does not depend on it, and a resume at batch n draws as the unbroken run.
The loop numbers batches by its step (`train_dataset`'s start_step), so batch n is step n
even after a resume that changed `train.batch_size`.

Token-budget batching (`data.naflex.tokens_per_batch`, open_clip's rule,
schema.token_batch_sizes) gives each budget its own batch size: a logical stream then counts
the examples of each batch as they come (`patchified`), and a resume at step n continues
from the examples read so far, whatever the sizes were.

The batch carries PATCHES [b, N, p*p*C] float32 (already in `data.value_range`), MASK
[b, N] int32 and SHAPE [b, 2] int32 (each image's patch grid); ENLARGED [b] int32 flags an
image smaller than one patch (enlarged to one patch by `naflex_patches`), which the loop
counts (train/stream_progress.py).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import ml_collections
import numpy as np
import tensorflow as tf

from contrastive_jax.data.naflex import naflex_patches
from contrastive_jax.data.schema import NAFLEX_ENLARGED as ENLARGED
from contrastive_jax.data.schema import NAFLEX_MASK as MASK
from contrastive_jax.data.schema import NAFLEX_PATCHES as PATCHES
from contrastive_jax.data.schema import NAFLEX_SHAPE as SHAPE
from contrastive_jax.data.schema import token_batch_sizes

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
    # One graph for every budget: the budget is a tensor (its batch's draw).
    budget = tf.gather(tf.constant(budgets, tf.int32), index) if len(budgets) > 1 else (
        budgets[0])
    out = naflex_patches(image, patch, budget, value_range)
    small = tf.logical_or(shape[0] < patch, shape[1] < patch)
    rest = {k: v for k, v in example.items() if k != "image"}
    return {**rest, PATCHES: out["patches"], MASK: out["mask"], SHAPE: out["shape"],
            ENLARGED: tf.cast(small, tf.int32)}


def run_batch_sizes(data_config: ml_collections.ConfigDict, streams: int,
                    shards: int) -> list[int] | None:
    """A run's global batch size per budget with token-budget batching
    (`data.naflex.tokens_per_batch`), multiples of lcm(`streams` logical streams, `shards`
    = batch shards x micro-batches); None without it (every batch `train.batch_size`)."""
    if not enabled(data_config) or not data_config.naflex.tokens_per_batch:
        return None
    return token_batch_sizes(budgets_and_weights(data_config)[0],
                             data_config.naflex.tokens_per_batch, math.lcm(streams, shards))


# Plain TF ops throughout (naflex_patches' loops are tf.while_loop and tf.cond): autograph's
# conversion of the resize code would cost seconds at every build of the stream.
@tf.autograph.experimental.do_not_convert
def patchified(ds: tf.data.Dataset, data_config: ml_collections.ConfigDict, *, seed: int,
               chunks: Sequence[int], start_step: int, patch: int) -> tf.data.Dataset:
    """One logical stream's examples -> (n, batch n) for n = start_step, ...: batch n holds
    `chunks[i]` examples, i = batch n's budget index, patchified at that budget."""
    budgets, weights = budgets_and_weights(data_config)
    value_range = tuple(float(v) for v in data_config.value_range)
    sizes = tf.constant(chunks, tf.int64)

    def chunk_of(n):
        return tf.gather(sizes, budget_index(weights, seed, n))

    if len(set(chunks)) == 1:  # one batch size: example i is in batch start_step + i // c
        c = chunks[0]
        ds = ds.enumerate().map(lambda i, ex: (start_step + i // c, ex))
    else:  # token-budget batching: the batch an example falls in is counted as it comes
        def assign(state, ex):
            n, served = state
            served += 1
            full = served >= chunk_of(n)
            return (tf.where(full, n + 1, n), tf.where(full, tf.zeros_like(served), served)), (
                n, ex)

        start = (tf.constant(start_step, tf.int64), tf.constant(0, tf.int64))
        ds = ds.scan(start, assign)

    @tf.autograph.experimental.do_not_convert
    def fn(n, example):
        index = budget_index(weights, seed, n)
        return n, patchify_example(example, index, budgets, patch, value_range)

    ds = ds.map(fn, num_parallel_calls=tf.data.AUTOTUNE)
    if len(set(chunks)) == 1:
        ds = ds.batch(chunks[0], drop_remainder=True)
    else:  # every batch's examples are consecutive and exactly its chunk: windows fill
        ds = ds.group_by_window(key_func=lambda n, ex: n, window_size_func=chunk_of,
                                reduce_func=lambda n, window: window.batch(chunk_of(n)))
    return ds.map(lambda n, batch: (n[0], batch))
