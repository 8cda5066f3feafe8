"""Shard-local contrastive losses: call these INSIDE `shard_map` over the batch axes.

Each device sees b = B / n rows of each tower (and of `labels`). Both functions return
the GLOBAL loss and metrics, identical on every device of the batch axes.

- `softmax_loss_sharded`: all-gathers the other tower; local b x B logits. Memory grows
  with n (the gathered tower and the b x B logits), which is inherent to softmax.
- `sigmoid_loss_ring`: SigLIP with text chunks passed around the ring one b x b block at
  a time, with a hand-written backward pass so memory does not grow with n.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

from contrastive_jax.errors import ConfigError
from contrastive_jax.losses import reference as ref

AxisName = str | tuple[str, ...]
Metrics = dict[str, jax.Array]


def _axes(axis_name: AxisName) -> tuple[str, ...]:
    return axis_name if isinstance(axis_name, tuple) else (axis_name,)


def _mask(
    n_rows: int,
    n_cols: int,
    lab_rows: jax.Array | None,
    lab_cols: jax.Array | None,
    diag_offset: jax.Array | int = 0,
) -> jax.Array:
    """Positive mask of a local [n_rows, n_cols] block.

    With labels: label equality. Without: the global diagonal, which in this block sits
    at column `row + diag_offset`.
    """
    if lab_rows is not None:
        return lab_rows[:, None] == lab_cols[None, :]
    rows = jnp.arange(n_rows)[:, None] + diag_offset
    return rows == jnp.arange(n_cols)[None, :]


# --------------------------------------------------------------------------------------
# Softmax: all-gather.
# --------------------------------------------------------------------------------------


def softmax_loss_sharded(
    zimg: jax.Array,
    ztxt: jax.Array,
    t: jax.Array,
    b: jax.Array | None = None,
    labels: jax.Array | None = None,
    *,
    axis_name: AxisName,
) -> tuple[jax.Array, Metrics]:
    """CLIP symmetric CE from local shards; all-gathers the other tower (b x B logits).

    Gradients flow through `all_gather` (its transpose is a reduce-scatter), so no
    custom backward is needed. `b` is ignored.
    """
    del b
    axes = _axes(axis_name)
    n_local = zimg.shape[0]
    n_global = n_local * lax.axis_size(axes)
    t32 = jnp.asarray(t, jnp.float32)
    img_all = lax.all_gather(zimg, axes, tiled=True)
    txt_all = lax.all_gather(ztxt, axes, tiled=True)
    if labels is not None:
        pos = _mask(n_local, n_global, labels, lax.all_gather(labels, axes, tiled=True))
    else:
        pos = _mask(n_local, n_global, None, None, lax.axis_index(axes) * n_local)
    # Rows of the image->text matrix and rows of the text->image matrix held here;
    # the label relation is symmetric so both use the same mask.
    i2t = t32 * ref.similarities(zimg, txt_all)
    t2i = t32 * ref.similarities(ztxt, img_all)
    ce = jnp.sum(ref.soft_cross_entropy(i2t, pos)) + jnp.sum(ref.soft_cross_entropy(t2i, pos))
    loss = lax.psum(ce, axes) / (2.0 * n_global)
    # The local i2t rows partition the full matrix, so their sums give global metrics.
    sums = lax.psum(ref.logit_sums(i2t, pos), axes)
    return loss, ref.metrics_from_sums(sums)


# --------------------------------------------------------------------------------------
# Sigmoid: ring with a custom backward pass.
# --------------------------------------------------------------------------------------


def _shift(x, axes: tuple[str, ...], n: int, k: int):
    """Send every leaf of x from device i to device (i + k) mod n along `axes`."""
    if k % n == 0:
        return x
    return lax.ppermute(x, axes, perm=[(i, (i + k) % n) for i in range(n)])


def _ring(visit, acc, data, buf, *, axes: tuple[str, ...], n: int, bidirectional: bool,
          empty=None, merge=None):
    """Visits every (local image rows, text chunk) block once; returns (acc, home buf).

    `data` (a text chunk and its labels) travels around the ring together with `buf`, a
    per-chunk accumulator that `visit(acc, data, buf, own)` may update (`own`: the chunk
    is this device's own). Travelling buffers are sent back to the chunk's owner at the
    end, so the returned buffer holds every device's contribution to OUR chunk.

    Unidirectional: one copy moves right (device i -> i + 1) and visits all n chunks;
    its buffer is home after the n-th hop. Bidirectional: the right-moving copy visits
    the ceil(n / 2) chunks owned by idx, idx - 1, ...; a second, left-moving copy visits
    those owned by idx + 1 .. idx + n // 2. Sequential hops drop from n - 1 to n // 2
    (two blocks per step instead of one); each buffer then goes home in one permute.
    Each copy makes one more data hop than it needs (its last block's transfer is
    issued alongside the block); that keeps the loop body uniform, at the cost of one
    chunk transfer that overlaps with compute.

    `empty`: the left-moving copy's starting buffer (default: zeros like `buf`); `merge`:
    how the two copies' buffers combine at home (default: added). A buffer of running
    log-sum-exps needs both (see chunked_softmax.py).
    """
    # With n <= 2 both directions reach the same single neighbour: stay unidirectional.
    n_left = n // 2 if bidirectional and n > 2 else 0
    n_right = n - n_left

    def visit_after(acc, data, buf, own, pending):
        # Waiting on everything earlier blocks produced (acc and their buffers) keeps
        # only one b x b block live at a time, also where XLA inlines short loops.
        acc, data, buf, pending = lax.optimization_barrier((acc, data, buf, pending))
        acc, buf = visit(acc, data, buf, own)
        return acc, buf, pending

    def step(s, carry, both):
        acc, (rdata, rbuf), left = carry
        # The next chunk's transfer does not depend on this block, so it can overlap
        # with its compute; a buffer can only leave once its block has added to it.
        rnext = _shift(rdata, axes, n, 1)
        acc, rbuf, left = visit_after(acc, rdata, rbuf, s == 0, left)
        if both:
            ldata, lbuf = left
            lnext = _shift(ldata, axes, n, -1)
            acc, lbuf, rbuf = visit_after(acc, ldata, lbuf, False, rbuf)
            left = (lnext, _shift(lbuf, axes, n, -1))
        return acc, (rnext, _shift(rbuf, axes, n, 1)), left

    # The left copy starts one hop away: it visits chunks idx + 1 .. idx + n_left.
    if empty is None:
        empty = jax.tree.map(jnp.zeros_like, buf)
    left = (_shift(data, axes, n, -1), empty) if n_left else None
    carry = (acc, (data, buf), left)
    # fori_loop keeps the compiled size independent of n.
    if n_left:
        carry = lax.fori_loop(0, n_left, functools.partial(step, both=True), carry)
    acc, right, left = lax.fori_loop(n_left, n_right, functools.partial(step, both=False), carry)
    # Right buffers have moved n_right hops (n: already home), left ones n_left + 1.
    home = _shift(right[1], axes, n, -n_right)
    if n_left:
        other = _shift(left[1], axes, n, n_left + 1)
        home = merge(home, other) if merge is not None else jax.tree.map(jnp.add, home, other)
    return acc, home


def check_tile(bidirectional: bool = False, tile: int = 0) -> None:
    """The ring options' values (run by `create_loss` before anything is traced)."""
    del bidirectional
    if isinstance(tile, bool) or not isinstance(tile, int) or tile < 0:
        raise ValueError(f"tile must be an integer >= 0 (0: whole blocks), got {tile!r}")


def _tiled(visit, tile: int):
    """`visit(acc, data, buf, own, offset)` over column tiles of each text chunk, one
    b x tile block at a time (`offset`: the tile's first row within the chunk), as the
    ring's `visit(acc, data, buf, own)`. tile = 0, or one as large as the chunk, is the
    whole b x b block at once. Per-device loss memory is then O(b x tile), not O(b^2)."""

    def whole_or_tiles(acc, data, buf, own):
        n_cols = jax.tree.leaves(data)[0].shape[0]
        if not tile or tile >= n_cols:
            return visit(acc, data, buf, own, 0)
        if n_cols % tile:
            raise ConfigError(f"config key 'loss.tile': {tile} does not divide the "
                              f"{n_cols} text rows of a device's chunk")
        count = n_cols // tile

        def split(x):
            return x.reshape(count, tile, *x.shape[1:])

        def body(acc, xs):
            index, piece, piece_buf = xs
            return visit(acc, piece, piece_buf, own, index * tile)

        acc, bufs = lax.scan(body, acc, (jnp.arange(count), jax.tree.map(split, data),
                                         jax.tree.map(split, buf)))
        return acc, jax.tree.map(lambda x: x.reshape(n_cols, *x.shape[2:]), bufs)

    return whole_or_tiles


def _block(zimg, txt, lab_img, lab_txt, own, t, b, offset=0):
    """Similarities and logits (float32) and the positive mask of one block of the
    chunk's text rows offset.. offset + len(txt)."""
    n_rows, n_cols = zimg.shape[0], txt.shape[0]
    # Without labels only the own block holds (global) diagonal positives.
    pos = _mask(n_rows, n_cols, lab_img, lab_txt, -offset)
    if lab_img is None:
        pos = jnp.logical_and(pos, own)
    sims = ref.similarities(zimg, txt)
    logits = t.astype(jnp.float32) * sims + b.astype(jnp.float32)
    return sims, logits, pos


def _sizes(zimg, axes):
    n = lax.axis_size(axes)
    return n, float(zimg.shape[0] * n)


@functools.partial(jax.custom_vjp, nondiff_argnums=(5, 6, 7))
def _sigmoid_ring(zimg, ztxt, t, b, labels, axes, bidirectional, tile):
    return _sigmoid_ring_fwd(zimg, ztxt, t, b, labels, axes, bidirectional, tile)[0]


def _sigmoid_ring_fwd(zimg, ztxt, t, b, labels, axes, bidirectional, tile):
    n, n_global = _sizes(zimg, axes)

    @functools.partial(_tiled, tile=tile)
    def visit(acc, data, buf, own, offset):
        txt, lab_txt = data
        _, logits, pos = _block(zimg, txt, labels, lab_txt, own, t, b, offset)
        nll = -jnp.sum(jax.nn.log_sigmoid(jnp.where(pos, logits, -logits)))
        return acc + jnp.concatenate([nll[None], ref.logit_sums(logits, pos)]), buf

    # zeros_like keeps the device-varying type that the loop carry needs under check_vma.
    acc0 = jnp.zeros_like(zimg, jnp.float32, shape=(5,))
    acc, _ = _ring(visit, acc0, (ztxt, labels), (), axes=axes, n=n, bidirectional=bidirectional)
    acc = lax.psum(acc, axes)
    out = (acc[0] / n_global, ref.metrics_from_sums(acc[1:]))
    # Only the inputs are saved: no per-step chunk or block survives the forward pass.
    return out, (zimg, ztxt, t, b, labels)


def _vma(x: jax.Array) -> frozenset[str]:
    """Mesh axes along which x is device-varying (empty when check_vma is off)."""
    aval = jax.typeof(x)
    mat = getattr(aval, "manual_axis_type", None)  # jax >= 0.10
    return frozenset(mat.varying if mat is not None else getattr(aval, "vma", ()))


def _scalar_grad(x: jax.Array, like: jax.Array, axes: tuple[str, ...], checked: bool):
    """Turns per-device partial grads of scalar `like` into its cotangent.

    Under check_vma a replicated (P()) input is device-invariant, so its cotangent must
    be the full (psum'd) gradient; if the caller made it device-varying, each copy only
    influenced its own device's rows, so the partial is already right. Without
    check_vma, shard_map itself psums the cotangents of P() inputs.
    """
    sum_axes = tuple(a for a in axes if a not in _vma(like)) if checked else ()
    return (lax.psum(x, sum_axes) if sum_axes else x).astype(like.dtype)


def _sigmoid_ring_bwd(axes, bidirectional, tile, res, cts):
    zimg, ztxt, t, b, labels = res
    g, _ = cts  # metrics are stop_gradient'ed: their cotangents are ignored.
    # The batch-sharded zimg is device-varying iff shard_map runs with check_vma.
    checked = set(axes) <= _vma(zimg)
    if not checked:
        # Without check_vma, the transpose of the forward's psum is a psum (the
        # cotangent arrives split across devices); do what autodiff would.
        g = lax.psum(g, axes)
    n, n_global = _sizes(zimg, axes)
    t32 = t.astype(jnp.float32)
    scale = g.astype(jnp.float32) / n_global
    zimg32 = zimg.astype(jnp.float32)

    @functools.partial(_tiled, tile=tile)
    def visit(acc, data, buf, own, offset):
        dimg, dt, db = acc
        txt, lab_txt = data
        sims, logits, pos = _block(zimg, txt, labels, lab_txt, own, t, b, offset)
        # d/dx -log_sigmoid(z x) = -z sigmoid(-z x), with z = +-1.
        z = jnp.where(pos, 1.0, -1.0)
        dlogits = -scale * z * jax.nn.sigmoid(-z * logits)
        dimg = dimg + t32 * jnp.dot(dlogits, txt.astype(jnp.float32))
        buf = buf + t32 * jnp.dot(dlogits.T, zimg32)
        return (dimg, dt + jnp.sum(dlogits * sims), db + jnp.sum(dlogits)), buf

    zero = jnp.zeros_like(zimg, jnp.float32, shape=())
    acc0 = (jnp.zeros_like(zimg, jnp.float32), zero, zero)
    buf0 = jnp.zeros_like(ztxt, jnp.float32)
    (dimg, dt, db), dtxt = _ring(
        visit, acc0, (ztxt, labels), buf0, axes=axes, n=n, bidirectional=bidirectional
    )
    dt, db = _scalar_grad(dt, t, axes, checked), _scalar_grad(db, b, axes, checked)
    return dimg.astype(zimg.dtype), dtxt.astype(ztxt.dtype), dt, db, None


_sigmoid_ring.defvjp(_sigmoid_ring_fwd, _sigmoid_ring_bwd)


def sigmoid_loss_ring(
    zimg: jax.Array,
    ztxt: jax.Array,
    t: jax.Array,
    b: jax.Array,
    labels: jax.Array | None = None,
    *,
    axis_name: AxisName,
    bidirectional: bool = False,
    tile: int = 0,
) -> tuple[jax.Array, Metrics]:
    """Chunked SigLIP: image rows stay local, text chunks go around the ring.

    The backward pass rotates the chunks again, recomputes each b x b block, and sends
    each chunk's gradient along with it, so peak memory is a few b x b blocks whatever
    the number of devices; `tile` splits each block into b x tile pieces (see `_tiled`).
    Value and gradients equal `reference.sigmoid_loss`.
    """
    if b is None:
        raise ValueError("sigmoid_loss_ring needs a bias b (a scalar; 0.0 for none)")
    t, b = jnp.asarray(t), jnp.asarray(b)
    loss, metrics = _sigmoid_ring(zimg, ztxt, t, b, labels, _axes(axis_name), bidirectional,
                                  int(tile))
    return loss, jax.lax.stop_gradient(metrics)
