"""Reference (oracle) contrastive losses on full, unsharded B x B logits.

These are the definitions the sharded forms are tested against. They materialise the
whole B x B matrix, so use them for small batches, tests, or when XLA's automatic
partitioning is good enough.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

Metrics = dict[str, jax.Array]


def positive_mask(n_rows: int, n_cols: int, labels: jax.Array | None) -> jax.Array:
    """Boolean [n_rows, n_cols] mask of positive pairs for a full (unsharded) batch.

    With labels, (i, j) is positive iff labels[i] == labels[j]; otherwise the diagonal.
    """
    if labels is None:
        return jnp.eye(n_rows, n_cols, dtype=jnp.bool_)
    return labels[:, None] == labels[None, :]


def similarities(zimg: jax.Array, ztxt: jax.Array) -> jax.Array:
    """zimg @ ztxt.T accumulated in float32 (bf16 inputs would lose the small logits)."""
    return jnp.dot(zimg, ztxt.T, preferred_element_type=jnp.float32)


def logit_sums(logits: jax.Array, pos: jax.Array) -> jax.Array:
    """[sum of positive logits, #positives, sum of negative logits, #negatives] (float32).

    Sums (not means) so sharded forms can psum them before dividing.
    """
    logits = jax.lax.stop_gradient(logits)
    posf = pos.astype(jnp.float32)
    return jnp.stack(
        [
            jnp.sum(logits * posf),
            jnp.sum(posf),
            jnp.sum(logits * (1.0 - posf)),
            jnp.sum(1.0 - posf),
        ]
    )


def metrics_from_sums(sums: jax.Array) -> Metrics:
    """pos_logit / neg_logit means from `logit_sums` output (guarding empty sets)."""
    sums = jax.lax.stop_gradient(sums)
    return {
        "pos_logit": sums[0] / jnp.maximum(sums[1], 1.0),
        "neg_logit": sums[2] / jnp.maximum(sums[3], 1.0),
    }


def soft_cross_entropy(logits: jax.Array, pos: jax.Array) -> jax.Array:
    """Per-row CE against a target uniform over each row's positives; returns [rows].

    A row without positives (impossible when labels compare a batch with itself) gets 0.
    """
    posf = pos.astype(jnp.float32)
    target = posf / jnp.maximum(jnp.sum(posf, axis=-1, keepdims=True), 1.0)
    return -jnp.sum(target * jax.nn.log_softmax(logits, axis=-1), axis=-1)


def softmax_loss(
    zimg: jax.Array,
    ztxt: jax.Array,
    t: jax.Array,
    b: jax.Array | None = None,
    labels: jax.Array | None = None,
) -> tuple[jax.Array, Metrics]:
    """CLIP symmetric cross-entropy; `b` is ignored (softmax is shift-invariant).

    The metrics' logits are likewise t * zimg @ ztxt.T, without a bias.
    """
    del b
    logits = jnp.asarray(t, jnp.float32) * similarities(zimg, ztxt)
    pos = positive_mask(zimg.shape[0], ztxt.shape[0], labels)
    i2t = jnp.mean(soft_cross_entropy(logits, pos))
    # The label relation is symmetric, so the columns' positives are pos.T.
    t2i = jnp.mean(soft_cross_entropy(logits.T, pos.T))
    loss = 0.5 * (i2t + t2i)
    return loss, metrics_from_sums(logit_sums(logits, pos))


def sigmoid_loss(
    zimg: jax.Array,
    ztxt: jax.Array,
    t: jax.Array,
    b: jax.Array,
    labels: jax.Array | None = None,
) -> tuple[jax.Array, Metrics]:
    """SigLIP as in big_vision: -sum_ij log_sigmoid(z_ij * logits_ij) / B, z in {+1, -1}."""
    if b is None:
        raise ValueError("sigmoid_loss needs a bias b (a scalar; 0.0 for none)")
    logits = jnp.asarray(t, jnp.float32) * similarities(zimg, ztxt) + jnp.asarray(b, jnp.float32)
    pos = positive_mask(zimg.shape[0], ztxt.shape[0], labels)
    z = jnp.where(pos, 1.0, -1.0)
    # Sum over columns (texts), mean over rows (images), exactly big_vision's nll.
    loss = jnp.mean(-jnp.sum(jax.nn.log_sigmoid(z * logits), axis=-1))
    return loss, metrics_from_sums(logit_sums(logits, pos))
