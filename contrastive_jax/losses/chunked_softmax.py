"""Chunked CLIP softmax loss: call INSIDE `shard_map` over the batch axes.

The image shard stays put and text shards travel the ring one b x b block at a time, as in
the sigmoid ring (sharded.py). Softmax needs whole rows and whole columns of the B x B
logits, so each block updates two online log-sum-exps: the rows' (kept here) and the
columns' (a buffer that travels with its text chunk and goes home at the end). The custom
backward pass re-runs the ring with the probabilities exp(logit - lse) and carries each
chunk's gradient home, so per-device memory stays a few b x b blocks whatever the number
of devices: the all-gather form (`softmax_loss_sharded`) holds b x B logits and the whole
gathered tower.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

from contrastive_jax.losses import reference as ref
from contrastive_jax.losses.sharded import (
    AxisName,
    Metrics,
    _axes,
    _mask,
    _ring,
    _scalar_grad,
    _sizes,
    _tiled,
    _vma,
)

# The running max before any block: finite, so that exp(_EMPTY - max) is 0, not nan.
_EMPTY = -1e30


def _online(m: jax.Array, s: jax.Array, logits: jax.Array, axis: int):
    """A running (max, sum of exp(logit - max)) along `axis`, updated with one block."""
    m_new = jnp.maximum(m, jnp.max(logits, axis=axis))
    s_new = s * jnp.exp(m - m_new) + jnp.sum(
        jnp.exp(logits - jnp.expand_dims(m_new, axis)), axis=axis)
    return m_new, s_new


def _merge_columns(a, b):
    """Two partial column accumulators of the same chunk (the two ring directions)."""
    (m1, s1, pw1, n1), (m2, s2, pw2, n2) = a, b
    m = jnp.maximum(m1, m2)
    return m, s1 * jnp.exp(m1 - m) + s2 * jnp.exp(m2 - m), pw1 + pw2, n1 + n2


def _empty_stats(like: jax.Array) -> tuple[jax.Array, ...]:
    """(running max, exp-sum, sum of positive logits, #positives) per row of `like`;
    built from `like` so the loop carry keeps its device-varying type under check_vma."""
    zero = jnp.zeros_like(like, jnp.float32, shape=like.shape[:1])
    return zero + _EMPTY, zero, zero, zero


def _block(zimg, txt, lab_img, lab_txt, own, t32, offset):
    """Similarities, logits and the positive mask of one block of the chunk's text rows
    offset.. offset + len(txt)."""
    pos = _mask(zimg.shape[0], txt.shape[0], lab_img, lab_txt, -offset)
    if lab_img is None:  # the global diagonal lies in the own block only
        pos = jnp.logical_and(pos, own)
    sims = ref.similarities(zimg, txt)
    return sims, t32 * sims, pos


def _cross_entropy(lse, pos_logits, count):
    """Per-row CE against a target uniform over the row's positives (0 without any), as
    `reference.soft_cross_entropy`: lse - mean positive logit."""
    return jnp.where(count > 0, lse - pos_logits / jnp.maximum(count, 1.0), 0.0)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5, 6))
def _softmax_ring(zimg, ztxt, t, labels, axes, bidirectional, tile):
    return _softmax_ring_fwd(zimg, ztxt, t, labels, axes, bidirectional, tile)[0]


def _softmax_ring_fwd(zimg, ztxt, t, labels, axes, bidirectional, tile):
    n, n_global = _sizes(zimg, axes)
    t32 = t.astype(jnp.float32)

    @functools.partial(_tiled, tile=tile)
    def visit(acc, data, buf, own, offset):
        (m_r, s_r, pw_r, cnt_r), sums = acc
        m_c, s_c, pw_c, cnt_c = buf
        txt, lab_txt = data
        _, logits, pos = _block(zimg, txt, labels, lab_txt, own, t32, offset)
        posf = pos.astype(jnp.float32)
        m_r, s_r = _online(m_r, s_r, logits, axis=1)
        m_c, s_c = _online(m_c, s_c, logits, axis=0)
        rows = (m_r, s_r, pw_r + jnp.sum(posf * logits, 1), cnt_r + jnp.sum(posf, 1))
        cols = (m_c, s_c, pw_c + jnp.sum(posf * logits, 0), cnt_c + jnp.sum(posf, 0))
        return (rows, sums + ref.logit_sums(logits, pos)), cols

    acc0 = (_empty_stats(zimg), jnp.zeros_like(zimg, jnp.float32, shape=(4,)))
    buf0 = _empty_stats(ztxt)
    ((m_r, s_r, pw_r, cnt_r), sums), (m_c, s_c, pw_c, cnt_c) = _ring(
        visit, acc0, (ztxt, labels), buf0, axes=axes, n=n, bidirectional=bidirectional,
        empty=buf0, merge=_merge_columns)
    lse_r, lse_c = m_r + jnp.log(s_r), m_c + jnp.log(s_c)
    ce = (jnp.sum(_cross_entropy(lse_r, pw_r, cnt_r))
          + jnp.sum(_cross_entropy(lse_c, pw_c, cnt_c)))
    loss = lax.psum(ce, axes) / (2.0 * n_global)
    metrics = ref.metrics_from_sums(lax.psum(sums, axes))
    # Saved: the inputs and O(b) row / column statistics; no block survives the forward.
    return (loss, metrics), (zimg, ztxt, t, labels, lse_r, cnt_r, lse_c, cnt_c)


def _softmax_ring_bwd(axes, bidirectional, tile, res, cts):
    zimg, ztxt, t, labels, lse_r, cnt_r, lse_c, cnt_c = res
    g, _ = cts  # metrics are stop_gradient'ed: their cotangents are ignored.
    checked = set(axes) <= _vma(zimg)
    if not checked:  # see sharded._sigmoid_ring_bwd: autodiff's transpose of the psum
        g = lax.psum(g, axes)
    n, n_global = _sizes(zimg, axes)
    t32 = t.astype(jnp.float32)
    scale = g.astype(jnp.float32) / (2.0 * n_global)
    zimg32 = zimg.astype(jnp.float32)
    # d CE_row / d logit = p - target, for rows that have positives (others are 0).
    row_on = (cnt_r > 0).astype(jnp.float32)[:, None]
    row_target = row_on / jnp.maximum(cnt_r, 1.0)[:, None]

    @functools.partial(_tiled, tile=tile)
    def visit(acc, data, buf, own, offset):
        dimg, dt = acc
        txt, lab_txt, lse_chunk, cnt_chunk = data
        sims, logits, pos = _block(zimg, txt, labels, lab_txt, own, t32, offset)
        posf = pos.astype(jnp.float32)
        col_on = (cnt_chunk > 0).astype(jnp.float32)[None, :]
        d_rows = row_on * jnp.exp(logits - lse_r[:, None]) - posf * row_target
        d_cols = col_on * (jnp.exp(logits - lse_chunk[None, :])
                           - posf / jnp.maximum(cnt_chunk, 1.0)[None, :])
        dlogits = scale * (d_rows + d_cols)
        dimg = dimg + t32 * jnp.dot(dlogits, txt.astype(jnp.float32))
        buf = buf + t32 * jnp.dot(dlogits.T, zimg32)
        return (dimg, dt + jnp.sum(dlogits * sims)), buf

    acc0 = (jnp.zeros_like(zimg, jnp.float32), jnp.zeros_like(zimg, jnp.float32, shape=()))
    # Each chunk travels with its own column statistics.
    (dimg, dt), dtxt = _ring(visit, acc0, (ztxt, labels, lse_c, cnt_c),
                             jnp.zeros_like(ztxt, jnp.float32), axes=axes, n=n,
                             bidirectional=bidirectional)
    dt = _scalar_grad(dt, t, axes, checked)
    return dimg.astype(zimg.dtype), dtxt.astype(ztxt.dtype), dt, None


_softmax_ring.defvjp(_softmax_ring_fwd, _softmax_ring_bwd)


def softmax_loss_ring(
    zimg: jax.Array,
    ztxt: jax.Array,
    t: jax.Array,
    b: jax.Array | None = None,
    labels: jax.Array | None = None,
    *,
    axis_name: AxisName,
    bidirectional: bool = False,
    tile: int = 0,
) -> tuple[jax.Array, Metrics]:
    """CLIP's symmetric cross-entropy with text chunks travelling the ring (`b` is ignored,
    as softmax is shift-invariant). Value and gradients equal `reference.softmax_loss`;
    per-device memory does not grow with the number of devices, and `tile` splits each
    b x b block into b x tile pieces (sharded._tiled)."""
    del b
    loss, metrics = _softmax_ring(zimg, ztxt, jnp.asarray(t), labels, _axes(axis_name),
                                  bidirectional, int(tile))
    return loss, jax.lax.stop_gradient(metrics)
