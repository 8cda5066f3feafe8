"""Softmax-family variants from the contrastive literature, on full B x B logits.

All take L2-normalised embeddings and the inverse temperature t (logits L = t * zimg @ ztxt.T)
and return `(loss, metrics)` like the reference losses. Positives are the diagonal: these
forms weight or correct the negatives of each row, which needs the whole row, so they are
full-matrix (reference-only) losses; the registry refuses them on a mesh that splits the batch.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from contrastive_jax.losses.reference import (
    Metrics,
    logit_sums,
    metrics_from_sums,
    positive_mask,
    similarities,
)


def _check_no_labels(name: str, labels: jax.Array | None) -> None:
    if labels is not None:
        raise ValueError(f"loss {name!r} defines positives as the diagonal only; "
                         "use loss.positives='pairs'")


def check_hn_nce_options(alpha: float = 1.0, beta: float = 0.5) -> None:
    """Option checks, also run by `create_loss` before anything is traced."""
    if alpha < 0 or beta < 0:
        raise ValueError(f"hn_nce needs alpha >= 0 and beta >= 0, got {alpha}, {beta}")


def check_debiased_options(tau_plus: float = 0.1) -> None:
    if not 0 <= tau_plus < 1:
        raise ValueError(f"debiased_softmax needs 0 <= tau_plus < 1, got {tau_plus}")


def check_macl_options(beta: float = 0.5) -> None:
    if not 0 <= beta < 1:
        raise ValueError(f"macl needs 0 <= beta < 1 (keeps tau_A > 0), got {beta}")


def _logits(zimg: jax.Array, ztxt: jax.Array, t: jax.Array) -> jax.Array:
    return jnp.asarray(t, jnp.float32) * similarities(zimg, ztxt)


def _off_diagonal(n: int) -> jax.Array:
    return ~jnp.eye(n, dtype=jnp.bool_)


def _hn_nce_rows(logits: jax.Array, alpha: float, beta: float) -> jax.Array:
    """Per-row HN-NCE, in log space for stability."""
    n = logits.shape[0]
    neg = _off_diagonal(n)
    pos_logit = jnp.diagonal(logits)
    masked = lambda x: jnp.where(neg, x, -jnp.inf)  # noqa: E731 - a local one-liner
    # log sum_{j != i} w_ij e^{L_ij}, with w_ij = (n-1) e^{beta L_ij} / sum_{k != i} e^{beta L_ik}
    log_weighted_neg = (jnp.log(n - 1.0) + jax.nn.logsumexp(masked((1.0 + beta) * logits), -1)
                        - jax.nn.logsumexp(masked(beta * logits), -1))
    if alpha > 0:
        log_denominator = jnp.logaddexp(jnp.log(alpha) + pos_logit, log_weighted_neg)
    else:  # alpha = 0: the decoupled form (DHN-NCE), negatives only in the denominator
        log_denominator = log_weighted_neg
    return log_denominator - pos_logit


def hn_nce_loss(
    zimg: jax.Array,
    ztxt: jax.Array,
    t: jax.Array,
    b: jax.Array | None = None,
    labels: jax.Array | None = None,
    *,
    alpha: float = 1.0,
    beta: float = 0.5,
) -> tuple[jax.Array, Metrics]:
    """HN-NCE (Radenovic et al., "Filtering, Distillation, and Hard Negatives for
    Vision-Language Pre-Training" (DiHT), CVPR 2023), both directions averaged:

        L_i = -log e^{L_ii} / (alpha e^{L_ii} + sum_{j != i} w_ij e^{L_ij}),
        w_ij = (B - 1) e^{beta L_ij} / sum_{k != i} e^{beta L_ik}.

    beta = 0, alpha = 1 is CLIP's loss; larger beta up-weights hard negatives; alpha = 0
    drops the positive from the denominator (DHN-NCE).
    """
    del b
    _check_no_labels("hn_nce", labels)
    check_hn_nce_options(alpha, beta)
    logits = _logits(zimg, ztxt, t)
    loss = 0.5 * (jnp.mean(_hn_nce_rows(logits, alpha, beta))
                  + jnp.mean(_hn_nce_rows(logits.T, alpha, beta)))
    return loss, metrics_from_sums(logit_sums(logits, positive_mask(*logits.shape, None)))


def _log1mexp(a: jax.Array) -> jax.Array:
    """log(1 - e^a) for a < 0, accurate both near 0 and far below it."""
    return jnp.where(a > -0.6931472, jnp.log(-jnp.expm1(a)), jnp.log1p(-jnp.exp(a)))


def _debiased_rows(logits: jax.Array, t: jax.Array, tau_plus: float) -> jax.Array:
    """Per-row debiased loss, in log space: log(e^{L_ii} + N g_i) - L_ii.

    Linear sums overflow (or their positive term underflows) once logits of one row are
    ~87 apart, as at t >= 50; every term here is a log, so nothing leaves float32's range.
    """
    n = logits.shape[0]
    pos = jnp.diagonal(logits)
    if n == 1:  # no negatives: e^{L_ii} / e^{L_ii}
        return jnp.zeros_like(pos)
    num_neg = n - 1.0
    log_neg_sum = jax.nn.logsumexp(jnp.where(_off_diagonal(n), logits, -jnp.inf), axis=-1)
    # N g_i's clip at its theoretical minimum N e^{-t} (cosine similarity >= -1).
    log_floor = jnp.log(num_neg) - jnp.asarray(t, jnp.float32)
    if tau_plus > 0:
        # log(sum_{j != i} e^{L_ij} - N tau_plus e^{L_ii}) = log_neg_sum + log(1 - e^a):
        # defined while a < 0; otherwise the estimate is <= 0 and the clip takes over.
        a = jnp.log(num_neg * tau_plus) + pos - log_neg_sum
        valid = a < 0
        log_estimate = log_neg_sum + _log1mexp(jnp.where(valid, a, -1.0)) - jnp.log1p(-tau_plus)
        log_estimate = jnp.where(valid, log_estimate, -jnp.inf)
    else:
        log_estimate = log_neg_sum
    # log(e^{L_ii} + N g_i) - L_ii, as softplus: exact also where N g_i << e^{L_ii}.
    return jax.nn.softplus(jnp.maximum(log_estimate, log_floor) - pos)


def debiased_softmax_loss(
    zimg: jax.Array,
    ztxt: jax.Array,
    t: jax.Array,
    b: jax.Array | None = None,
    labels: jax.Array | None = None,
    *,
    tau_plus: float = 0.1,
) -> tuple[jax.Array, Metrics]:
    """Debiased contrastive loss (Chuang et al., NeurIPS 2020), both directions averaged:

        L_i = -log e^{L_ii} / (e^{L_ii} + N g_i),
        g_i = max((1/N sum_{j != i} e^{L_ij} - tau_plus e^{L_ii}) / (1 - tau_plus), e^{-t}),

    N = B - 1. tau_plus is the prior probability that a "negative" shares the anchor's
    class, i.e. the false-negative rate the estimator corrects for; 0 gives CLIP's loss.
    """
    del b
    _check_no_labels("debiased_softmax", labels)
    check_debiased_options(tau_plus)
    logits = _logits(zimg, ztxt, t)
    loss = 0.5 * (jnp.mean(_debiased_rows(logits, t, tau_plus))
                  + jnp.mean(_debiased_rows(logits.T, t, tau_plus)))
    return loss, metrics_from_sums(logit_sums(logits, positive_mask(*logits.shape, None)))


def _macl_rows(logits: jax.Array) -> jax.Array:
    n = logits.shape[0]
    log_p = jax.nn.log_softmax(logits, axis=-1)
    neg_prob = jnp.sum(jnp.where(_off_diagonal(n), jnp.exp(log_p), 0.0), axis=-1)
    weight = jax.lax.stop_gradient(1.0 / jnp.maximum(neg_prob, 1e-12))
    return -weight * jnp.diagonal(log_p)


def macl_loss(
    zimg: jax.Array,
    ztxt: jax.Array,
    t: jax.Array,
    b: jax.Array | None = None,
    labels: jax.Array | None = None,
    *,
    beta: float = 0.5,
) -> tuple[jax.Array, Metrics]:
    """Model-aware contrastive loss (Huang et al., ICML 2023; the authors' "MACLb"):

        A = mean_i sim(x_i, y_i)                  (alignment magnitude, no gradient)
        tau_A = tau_0 (1 + beta A),  tau_0 = 1 / t
        L_i = -W_i log softmax(sim_i / tau_A)_i,  W_i = 1 / sum_{j != i} P_ij (no gradient)

    The temperature rises as positives align, so a well-aligned model is not pushed to
    over-separate semantically similar negatives; W re-weights by the negatives' mass.
    """
    del b
    _check_no_labels("macl", labels)
    check_macl_options(beta)
    sims = similarities(zimg, ztxt)
    alignment = jax.lax.stop_gradient(jnp.mean(jnp.diagonal(sims)))
    logits = jnp.asarray(t, jnp.float32) * sims / (1.0 + beta * alignment)
    loss = 0.5 * (jnp.mean(_macl_rows(logits)) + jnp.mean(_macl_rows(logits.T)))
    metrics = metrics_from_sums(logit_sums(logits, positive_mask(*logits.shape, None)))
    metrics["macl_alignment"] = alignment
    return loss, metrics


def alignment_term(zimg: jax.Array, ztxt: jax.Array) -> jax.Array:
    """Wang & Isola's alignment: E ||x_i - y_i||^2 over positive pairs."""
    diff = zimg.astype(jnp.float32) - ztxt.astype(jnp.float32)
    return jnp.mean(jnp.sum(diff * diff, axis=-1))


def uniformity_term(z: jax.Array, scale: float = 2.0) -> jax.Array:
    """Wang & Isola's uniformity: log E_{i != j} exp(-scale ||z_i - z_j||^2)."""
    z = z.astype(jnp.float32)
    sq_dist = jnp.maximum(2.0 - 2.0 * (z @ z.T), 0.0)  # unit vectors
    n = z.shape[0]
    values = jnp.where(_off_diagonal(n), -scale * sq_dist, -jnp.inf)
    return jax.nn.logsumexp(values) - jnp.log(n * (n - 1.0))


def with_alignment_uniformity(base, align_weight: float, uniform_weight: float):
    """Adds alignment and uniformity terms to any LossFn, as proposed by Fahim et al.
    ("It's Not a Modality Gap: Characterizing and Addressing the Contrastive Gap", 2024):

        L = L_base + align_weight * align(x, y) + uniform_weight * (unif(x) + unif(y)) / 2.

    The terms are computed on the global arrays, so XLA gathers the batch for the
    uniformity term (a B x B matrix per tower): fine for moderate batches.
    """

    def loss_fn(zimg, ztxt, t, b=None, labels=None):
        loss, metrics = base(zimg, ztxt, t, b, labels)
        align = alignment_term(zimg, ztxt)
        uniform = 0.5 * (uniformity_term(zimg) + uniformity_term(ztxt))
        metrics = {**metrics, "alignment": jax.lax.stop_gradient(align),
                   "uniformity": jax.lax.stop_gradient(uniform)}
        return loss + align_weight * align + uniform_weight * uniform, metrics

    return loss_fn
