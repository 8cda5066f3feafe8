"""Exact gradient accumulation for contrastive losses (GradCache, Gao et al. 2021).

A contrastive loss couples every example with every other, so it cannot be summed over
micro-batches. GradCache splits the work instead:

1. embed all k micro-batches, forward only (no activations kept);
2. compute the FULL-batch loss on the concatenated embeddings, and its gradient with
   respect to the embeddings and to t_log / b;
3. re-run each micro-batch's towers under `jax.vjp` and pull back its slice of the
   embedding gradient, summing the parameter gradients over micro-batches.

Peak activation memory is one micro-batch's; the result equals the full-batch gradient.
t_log and b only enter step 2, so they get their gradient exactly once (accumulating
per-micro-batch losses, as open_clip does, would give them k partial gradients instead).
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from contrastive_jax.errors import ConfigError
from contrastive_jax.losses import LossFn
from contrastive_jax.models.state import ModelDef
from contrastive_jax.parallel.mesh import BATCH_AXES
from contrastive_jax.train.lock import merge_params

Params = dict[str, Any]


def split_microbatches(x: jax.Array, k: int, mesh: Mesh | None = None) -> jax.Array:
    """[B, ...] -> [k, B/k, ...]; micro-batch j holds rows j, j + k, j + 2k, ...

    The strided split keeps every device's rows on that device: with B sharded in
    contiguous blocks of b rows (b divisible by k), each device holds b/k rows of every
    micro-batch, so neither the split nor `merge_microbatches` moves data.
    """
    if x.shape[0] % k:
        raise ValueError(f"batch of {x.shape[0]} does not split into {k} micro-batches")
    y = jnp.swapaxes(x.reshape(x.shape[0] // k, k, *x.shape[1:]), 0, 1)
    if mesh is not None:
        shards = math.prod(mesh.shape[a] for a in BATCH_AXES)
        if y.shape[1] % shards:
            raise ConfigError(f"config key 'train.microbatches': micro-batches of {y.shape[1]} "
                              f"examples do not split over {shards} batch shards; use fewer "
                              "micro-batches")
        y = jax.lax.with_sharding_constraint(
            y, NamedSharding(mesh, PartitionSpec(None, BATCH_AXES)))
    return y


def merge_microbatches(y: jax.Array, mesh: Mesh | None = None) -> jax.Array:
    """Inverse of `split_microbatches`: [k, B/k, ...] -> [B, ...] in the original order."""
    x = jnp.swapaxes(y, 0, 1).reshape(y.shape[0] * y.shape[1], *y.shape[2:])
    if mesh is not None:
        x = jax.lax.with_sharding_constraint(x, NamedSharding(mesh, PartitionSpec(BATCH_AXES)))
    return x


def grad_cache_value_and_grad(
    model_def: ModelDef,
    loss_fn: LossFn,
    params: Params,
    rest: Params,
    image: jax.Array,
    text: jax.Array,
    labels: jax.Array | None,
    k: int,
    mesh: Mesh | None = None,
    locked: Params | None = None,
    mask_noise: jax.Array | None = None,
) -> tuple[tuple[jax.Array, tuple[dict, jax.Array, jax.Array]], Params]:
    """Same result as `value_and_grad(loss_of, has_aux=True)(params)` of the plain step.

    Returns ((loss, (aux, t, b)), grads); k micro-batches bound the activation memory.
    `locked`: params held constant (train/lock.py); `params` and the grads are the rest.
    `mask_noise`: the batch's FLIP noise [B, N], split with the images.
    """
    locked = locked or {}

    def bind(p: Params):
        return model_def.bind(merge_params(p, locked), rest)

    def towers(p: Params, img, txt: jax.Array) -> tuple[jax.Array, jax.Array]:
        model = bind(p)
        return model.encode_image(*img), model.encode_text(txt)

    # Each micro-batch's images travel with their mask noise: (image,) or (image, noise);
    # an image may be a pytree (NaFlexImages: patches, mask and grid shapes, split alike).
    images = tuple(jax.tree.map(lambda a: split_microbatches(a, k, mesh), x)
                   for x in (image, mask_noise) if x is not None)
    texts = split_microbatches(text, k, mesh)

    # (a) Forward only: the scan keeps nothing but the [B/k, D] embeddings per step.
    frozen = jax.lax.stop_gradient(params)

    def embed(_, xs):
        return None, towers(frozen, *xs)

    _, (zimg, ztxt) = jax.lax.scan(embed, None, (images, texts))
    zimg, ztxt = merge_microbatches(zimg, mesh), merge_microbatches(ztxt, mesh)

    # (b) Full-batch loss. Differentiating w.r.t. the whole params dict reaches only
    # t_log and b (the towers are not run here): their ONE gradient contribution.
    def head_loss(p: Params, zi: jax.Array, zt: jax.Array):
        model = bind(p)
        t, b = model.temperature(), model.bias()
        loss, aux = loss_fn(zi, zt, t, b, labels)
        return loss, (aux, t, b)

    (loss, aux), (head_grads, dzimg, dztxt) = jax.value_and_grad(
        head_loss, argnums=(0, 1, 2), has_aux=True)(params, zimg, ztxt)

    # (c) Backward micro-batch by micro-batch: recompute the towers under vjp and pull
    # back this slice of the embedding gradient. Tower vjps give t_log / b zeros.
    def backward(acc: Params, xs):
        img, txt, gi, gt = xs
        _, pullback = jax.vjp(lambda p: towers(p, img, txt), params)
        (g,) = pullback((gi, gt))
        return jax.tree.map(jnp.add, acc, g), None

    cotangents = (split_microbatches(dzimg, k, mesh), split_microbatches(dztxt, k, mesh))
    tower_grads, _ = jax.lax.scan(backward, head_grads, (images, texts, *cotangents))
    return (loss, aux), tower_grads
