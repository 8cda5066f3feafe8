"""CatLIP's objective: multi-label binary cross-entropy over a synset vocabulary."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax


def multi_hot(ids: jax.Array, num_synsets: int) -> jax.Array:
    """[B, L] 1-based synset ids (0: none) -> float32 [B, num_synsets] targets."""
    rows = jnp.arange(ids.shape[0])[:, None]
    hot = jnp.zeros((ids.shape[0], num_synsets + 1), jnp.float32).at[rows, ids].set(1.0)
    return hot[:, 1:]


def synset_bce(logits: jax.Array, targets: jax.Array) -> tuple[jax.Array, dict]:
    """Summed over synsets, averaged over examples (corenet's "batch_mean"), with how many
    synsets an example names and the share that name none."""
    per_example = optax.sigmoid_binary_cross_entropy(logits.astype(jnp.float32), targets)
    named = targets.sum(axis=-1)
    return per_example.sum(axis=-1).mean(), {"synsets_per_example": named.mean(),
                                             "unlabelled_share": (named == 0).mean()}
