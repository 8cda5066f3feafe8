"""Captioning objective (CapPa, LocCa): next-token cross-entropy over a caption's tokens."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from contrastive_jax.data.text_conventions import EOS_ID

PAD_ID = 0  # captioning models need data.pad_id = 0 (config/checks.py)


def cut_keeping_eos(tokens: jax.Array, max_len: int) -> jax.Array:
    """[B, L] ids -> [B, min(L, max_len)]: a caption longer than `max_len` keeps its EOS
    last, as `data.eos="sticky"` cuts (our tokenizers' EOS id; pads are 0)."""
    if tokens.shape[1] <= max_len:
        return tokens
    cut = tokens[:, :max_len]
    longer = tokens[:, max_len] != PAD_ID
    return cut.at[:, -1].set(jnp.where(longer, EOS_ID, cut[:, -1]))


def token_log_likelihoods(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """[B, L, V] float logits, [B, L] ids -> [B, L] log p(target) in float32."""
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    return jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]


def caption_log_likelihood(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """[B]: each caption's summed token log-likelihood, EOS included, pads excluded."""
    return jnp.sum(jnp.where(targets != PAD_ID, token_log_likelihoods(logits, targets), 0.0),
                   axis=-1)


def caption_loss(logits: jax.Array, targets: jax.Array) -> tuple[jax.Array, dict]:
    """Mean cross-entropy over every real (non-pad) target token of the batch, and
    metrics: token accuracy and the batch's share of tokens."""
    valid = targets != PAD_ID
    nll = -token_log_likelihoods(logits, targets)
    count = jnp.maximum(jnp.sum(valid), 1)
    loss = jnp.sum(jnp.where(valid, nll, 0.0)) / count
    hits = jnp.sum(valid & (jnp.argmax(logits, axis=-1) == targets)) / count
    return loss, {"token_accuracy": jax.lax.stop_gradient(hits)}
