"""ZeroVL's coin-flipping mixup (Cui et al. 2022, "Contrastive Vision-Language Pre-training
with Limited Resources"), as its code does it (zerovl/models/pipelines/clip.py, MixUpNCE).

A mixed step draws alpha ~ Beta(beta, beta) and flips a coin: heads mixes the raw images,
image_i' = alpha * image_i + (1 - alpha) * image_p(i); tails mixes the text embeddings
before their L2 normalisation (text is discrete, so ZeroVL mixes it in feature space). The
partner p(i) = B - 1 - i is the batch reversed, as ZeroVL's `flip(0)`; here over the
global batch, so the pairing does not depend on the mesh. Either way example i is a share
alpha of pair i and 1 - alpha of pair p(i), and its targets are soft in the same shares:

    loss = alpha * L(zimg, ztxt) + (1 - alpha) * L(zimg, ztxt[p]),

since every loss here is linear in its targets and L(zimg, ztxt[p]) is L with the
positives at (i, p(i)). The sharded losses are called as they are, on a reversed text
shard, so their gradients stay those of the reference (tests/test_zerovl.py).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp


def with_partner(x: jax.Array, alpha: jax.Array) -> jax.Array:
    """alpha * x + (1 - alpha) * x reversed along the batch (axis 0); alpha = 1 gives x."""
    return alpha * x + (1.0 - alpha) * jnp.flip(x, axis=0)


def draw(key: jax.Array, probability: float, image_share: float, beta: float) -> jax.Array:
    """[3] float32 (image alpha, text alpha, target alpha) of one step: with chance
    `probability` the step is mixed, its images with chance `image_share`, else its texts;
    an unmixed side has alpha 1."""
    k_mix, k_coin, k_alpha = jax.random.split(key, 3)
    mixed = jax.random.uniform(k_mix) < probability
    on_image = jax.random.uniform(k_coin) < image_share
    alpha = jax.random.beta(k_alpha, beta, beta)
    one = jnp.ones((), jnp.float32)
    return jnp.stack([jnp.where(mixed & on_image, alpha, one),
                      jnp.where(mixed & ~on_image, alpha, one),
                      jnp.where(mixed, alpha, one)]).astype(jnp.float32)


def mixed_loss(loss_fn: Callable, zimg: jax.Array, ztxt: jax.Array, t: jax.Array,
               b: jax.Array, alpha: jax.Array) -> tuple[jax.Array, dict]:
    """alpha * loss_fn(zimg, ztxt) + (1 - alpha) * loss_fn(zimg, reversed ztxt); the
    second term is skipped (not computed) on an unmixed step, alpha = 1."""
    loss, aux = loss_fn(zimg, ztxt, t, b, None)

    def partner_term() -> jax.Array:
        return (1.0 - alpha) * loss_fn(zimg, jnp.flip(ztxt, axis=0), t, b, None)[0]

    extra = jax.lax.cond(alpha < 1.0, partner_term, lambda: jnp.zeros((), loss.dtype))
    return alpha * loss + extra, aux
