"""Losses: sharded forms equal their references (values, metrics, gradients); memory."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from contrastive_jax.errors import ConfigError
from contrastive_jax.losses import (
    LOSS_NAMES,
    create_loss,
    sigmoid_loss,
    sigmoid_loss_ring,
    softmax_loss,
    softmax_loss_ring,
    softmax_loss_sharded,
)

B, D = 32, 16  # 4 rows per device on 8 devices.
B_ODD = 210  # divisible by 3, 5, 6 and 7: ring sizes that are odd or not a power of two
T, BIAS = 7.0, -3.0

# Test name -> (sharded loss, its reference, create_loss kwargs).
SHARDED = {
    "softmax_sharded": ("softmax_sharded", "softmax", {}),
    "softmax_ring": ("softmax_chunked", "softmax", {"bidirectional": False}),
    "softmax_ring_bidi": ("softmax_chunked", "softmax", {"bidirectional": True}),
    "sigmoid_ring": ("sigmoid_chunked", "sigmoid", {"bidirectional": False}),
    "sigmoid_ring_bidi": ("sigmoid_chunked", "sigmoid", {"bidirectional": True}),
    # loss.tile: each block in b x 2 pieces (a device's chunk holds 4 to 32 rows here).
    "sigmoid_ring_tiled": ("sigmoid_chunked", "sigmoid", {"bidirectional": False, "tile": 2}),
    "softmax_ring_tiled_bidi": ("softmax_chunked", "softmax",
                                {"bidirectional": True, "tile": 2}),
}


def _layouts(b: int) -> dict[str, np.ndarray | None]:
    """Label layouts for a batch of b. At b = 32 (shards of 4 on 8 devices, 8 on 4, 16
    on 2) the comments' shard numbers hold; at b = 210 (shards of 70 to 30 on 3 to 7
    devices) the same properties hold: one label over 2-3 shards, label 7 on 3 devices."""
    uneven = np.arange(100, 100 + b)  # unique by default
    uneven[0 : b // 3 + 1] = 0  # one label over shards 0-2 of 8, crossing boundaries
    uneven[[3, b * 13 // 32, b - 2]] = 7  # positives only on other devices (0, 3, 7)
    uneven[[b * 17 // 32, b * 17 // 32 + 1]] = 5  # a pair inside one shard
    two = np.tile(np.arange(2), b // 2)  # two huge classes, interleaved
    return {
        "diagonal": None,
        "uneven": uneven.astype(np.int32),
        "two_classes": two.astype(np.int32),
        "all_same": np.zeros(b, np.int32),  # no negatives at all
    }


LAYOUTS = _layouts(B)
ODD_LAYOUTS = _layouts(B_ODD)


def _normed(key: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    x = jax.random.normal(key, shape)
    return x / jnp.linalg.norm(x, axis=-1, keepdims=True)


@pytest.fixture(scope="module")
def emb() -> tuple[jax.Array, jax.Array]:
    k1, k2 = jax.random.split(jax.random.key(0))
    return _normed(k1, (B, D)), _normed(k2, (B, D))


@pytest.fixture(scope="module")
def emb_odd() -> tuple[jax.Array, jax.Array]:
    k1, k2 = jax.random.split(jax.random.key(1))
    return _normed(k1, (B_ODD, D)), _normed(k2, (B_ODD, D))


def _mesh(shape: tuple[int, ...], names: tuple[str, ...]) -> Mesh:
    n = int(np.prod(shape))
    return Mesh(np.array(jax.devices()[:n]).reshape(shape), names)


@functools.cache
def _vg(name: str, shape: tuple[int, ...], names: tuple[str, ...], batch_axes, labelled):
    """Jitted value_and_grad w.r.t. (zimg, ztxt, t, b), cached: compiling dominates."""
    if name in SHARDED:
        real, _, kwargs = SHARDED[name]
        fn = create_loss(real, mesh=_mesh(shape, names), batch_axes=batch_axes, **kwargs)
    else:
        fn = create_loss(name)

    def f(zimg, ztxt, t, b, labels):
        return fn(zimg, ztxt, t, b, labels if labelled else None)

    return jax.jit(jax.value_and_grad(f, argnums=(0, 1, 2, 3), has_aux=True))


def _run(name, labels, emb, shape=(1,), names=("data",), batch_axes=("data",)):
    zimg, ztxt = emb
    lab = jnp.zeros(zimg.shape[0], jnp.int32) if labels is None else jnp.asarray(labels)
    vg = _vg(name, shape, names, batch_axes, labels is not None)
    (loss, metrics), grads = vg(zimg, ztxt, jnp.float32(T), jnp.float32(BIAS), lab)
    return loss, metrics, grads


def _assert_rel(actual, expected, what: str, tol: float = 1e-5) -> None:
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    scale = max(float(np.abs(expected).max()), 1e-12)
    err = float(np.abs(actual - expected).max()) / scale
    assert err <= tol, f"{what}: relative error {err:.2e} > {tol:.0e}"


def _assert_matches(name, labels, emb, db_tol: float = 1e-5, **mesh_kw) -> None:
    ref_name = SHARDED[name][1]
    loss_r, met_r, grads_r = _run(ref_name, labels, emb)
    loss_s, met_s, grads_s = _run(name, labels, emb, **mesh_kw)
    _assert_rel(loss_s, loss_r, "loss")
    for k in ("pos_logit", "neg_logit"):
        assert met_s[k].dtype == jnp.float32
        _assert_rel(met_s[k], met_r[k], k)
    for arg, gs, gr in zip(("zimg", "ztxt", "t", "b"), grads_s, grads_r, strict=True):
        _assert_rel(gs, gr, f"d loss / d {arg}", db_tol if arg == "b" else 1e-5)


@pytest.mark.parametrize("n", [1, 2, 4, 8])
@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("name", list(SHARDED))
def test_sharded_equals_reference(name, layout, n, emb):
    _assert_matches(name, LAYOUTS[layout], emb, shape=(n,))


@pytest.mark.parametrize("n", [3, 5, 6, 7])
@pytest.mark.parametrize("layout", list(ODD_LAYOUTS))
@pytest.mark.parametrize("name", ["sigmoid_ring_bidi", "softmax_ring_bidi"])
def test_bidirectional_ring_on_odd_and_non_power_of_two_sizes(name, layout, n, emb_odd):
    """n odd: the right-moving copy visits one more chunk than the left-moving one."""
    # d/db sums B^2 terms of both signs: with "uneven" labels they cancel to -0.18 from
    # 42.5 in absolute value, so float32 sums in the ring's order and the reference's
    # differ by ~1e-5 relative (both ring directions alike). A missing or doubled block
    # would move it by ~1/n^2 of 42.5.
    _assert_matches(name, ODD_LAYOUTS[layout], emb_odd, db_tol=1e-4, shape=(n,))


@pytest.mark.parametrize(
    "batch_axes,layout",
    [
        (("data", "fsdp"), "diagonal"),
        (("data", "fsdp"), "uneven"),
        # Batch over "data" only: replicated over "fsdp", which must not double-count.
        (("data",), "uneven"),
    ],
)
@pytest.mark.parametrize("name", list(SHARDED))
def test_sharded_equals_reference_2d_mesh(name, batch_axes, layout, emb):
    kw = {"shape": (2, 4), "names": ("data", "fsdp"), "batch_axes": batch_axes}
    _assert_matches(name, LAYOUTS[layout], emb, **kw)


def test_reference_losses_basic(emb):
    zimg, ztxt = emb
    for name in ("softmax", "sigmoid"):
        loss, metrics, _ = _run(name, None, emb)
        assert loss.shape == () and loss.dtype == jnp.float32 and jnp.isfinite(loss)
        assert set(metrics) == {"pos_logit", "neg_logit"}
    # big_vision's convention by hand: sum over texts, mean over images.
    logits = T * zimg @ ztxt.T + BIAS
    z = 2 * jnp.eye(B) - 1
    expected = -jnp.sum(jax.nn.log_sigmoid(z * logits)) / B
    _assert_rel(_run("sigmoid", None, emb)[0], expected, "sigmoid")
    # Softmax with unique labels is the one-hot (diagonal) CLIP loss; bias is ignored.
    unique = np.arange(B, dtype=np.int32) * 3
    _assert_rel(_run("softmax", unique, emb)[0], _run("softmax", None, emb)[0], "ce")
    _assert_rel(jax.jit(softmax_loss)(zimg, ztxt, T, 5.0)[0], _run("softmax", None, emb)[0], "b")


def test_ring_gradient_lands_on_owner(emb):
    """A text gradient rotated by one shard would fail the reference comparison."""
    _, _, grads_r = _run("sigmoid", LAYOUTS["uneven"], emb)
    dtxt = np.asarray(grads_r[1])
    for n in (2, 4, 8):
        rotated = np.roll(dtxt, B // n, axis=0)
        scale = np.abs(dtxt).max()
        assert np.abs(rotated - dtxt).max() / scale > 1e-2  # the check can tell
        _, _, grads_s = _run("sigmoid_ring", LAYOUTS["uneven"], emb, shape=(n,))
        _assert_rel(grads_s[1], dtxt, f"dztxt on {n} devices")


@pytest.mark.parametrize("check_vma", [True, False])
@pytest.mark.parametrize("local_fn", [sigmoid_loss_ring, softmax_loss_sharded,
                                      softmax_loss_ring])
def test_shard_local_forms_in_user_shard_map(local_fn, check_vma, emb):
    """Direct use inside a caller's shard_map, with or without check_vma."""
    zimg, ztxt = emb
    mesh, axes = _mesh((2, 4), ("data", "fsdp")), ("data", "fsdp")
    local = functools.partial(local_fn, axis_name=axes)
    mapped = jax.shard_map(
        lambda *a: local(*a)[0],
        mesh=mesh,
        in_specs=(P(axes), P(axes), P(), P()),
        out_specs=P(),
        check_vma=check_vma,
    )
    args = (zimg, ztxt, jnp.float32(T), jnp.float32(BIAS))
    loss, grads = jax.jit(jax.value_and_grad(mapped, argnums=(0, 1, 2, 3)))(*args)
    want_loss, _, want_grads = _run(
        "sigmoid" if local_fn is sigmoid_loss_ring else "softmax", None, emb
    )
    _assert_rel(loss, want_loss, "loss")
    for gs, gr in zip(grads, want_grads, strict=True):
        _assert_rel(gs, gr, "grad")


def test_ring_with_device_varying_temperature(emb):
    """A per-device t (varying, not P()) gets only its own rows' gradient."""
    zimg, ztxt = emb
    n, axes = 4, "data"
    t_dev = jnp.array([5.0, 6.0, 7.0, 8.0])

    def local(zi, zt, t, b):
        return sigmoid_loss_ring(zi, zt, t[0], b, axis_name=axes)[0]

    mapped = jax.shard_map(
        local,
        mesh=_mesh((n,), (axes,)),
        in_specs=(P(axes), P(axes), P(axes), P()),
        out_specs=P(),
    )
    got = jax.jit(jax.grad(mapped, argnums=(2, 3)))(zimg, ztxt, t_dev, jnp.float32(BIAS))

    def ref(t, b):  # row i uses its device's temperature
        return sigmoid_loss(zimg, ztxt, jnp.repeat(t, B // n)[:, None], b)[0]

    want = jax.jit(jax.grad(ref, argnums=(0, 1)))(t_dev, jnp.float32(BIAS))
    for gs, gr in zip(got, want, strict=True):
        _assert_rel(gs, gr, "grad")


def test_bf16_inputs(emb):
    zimg, ztxt = (x.astype(jnp.bfloat16) for x in emb)
    mesh = _mesh((4,), ("data",))
    fn = create_loss("sigmoid_chunked", mesh=mesh, bidirectional=True)
    (loss, _), grads = jax.jit(
        jax.value_and_grad(lambda *a: fn(*a), argnums=(0, 1, 2, 3), has_aux=True)
    )(zimg, ztxt, jnp.float32(T), jnp.float32(BIAS))
    assert loss.dtype == jnp.float32
    assert [g.dtype for g in grads] == [jnp.bfloat16, jnp.bfloat16, jnp.float32, jnp.float32]
    _assert_rel(loss, jax.jit(sigmoid_loss)(zimg, ztxt, T, BIAS)[0], "bf16 loss")


def test_explicit_mesh_and_no_bias(emb):
    """jax.make_mesh gives Explicit axes: the loss reshards unsharded inputs itself."""
    zimg, ztxt = emb
    mesh = jax.make_mesh((4,), ("data",), devices=jax.devices()[:4])
    fn = create_loss("sigmoid_chunked", mesh=mesh)
    want = _run("sigmoid", None, emb)[0]
    _assert_rel(jax.jit(lambda *a: fn(*a)[0])(zimg, ztxt, T, BIAS), want, "explicit")
    # Softmax accepts b=None. (Eager calls work too, but trace op by op: slow here.)
    plain = jax.jit(create_loss("softmax_sharded", mesh=_mesh((2,), ("data",))))
    _assert_rel(plain(zimg, ztxt, T)[0], _run("softmax", None, emb)[0], "b=None")


def test_softmax_ring_where_every_logit_is_far_below_zero():
    """t = 100 and opposed towers: every logit is about -100, whose exp underflows float32
    unless each running log-sum-exp keeps its own max; the ring still equals the
    reference in value and gradients."""
    noise = jax.random.normal(jax.random.key(3), (2, B, D)) * 0.02
    base = jnp.zeros((B, D)).at[:, 0].set(1.0)
    zimg, ztxt = (x / jnp.linalg.norm(x, axis=-1, keepdims=True)
                  for x in (base + noise[0], -base + noise[1]))
    fn = create_loss("softmax_chunked", mesh=_mesh((4,), ("data",)), bidirectional=True)
    got, want = (jax.jit(jax.value_and_grad(lambda *a, f=f: f(*a)[0], argnums=(0, 1, 2)))(
        zimg, ztxt, jnp.float32(100.0)) for f in (fn, softmax_loss))
    assert float(jnp.max(100.0 * zimg @ ztxt.T)) < -88  # exp(-88) is below float32's range
    _assert_rel(got[0], want[0], "loss")
    for gs, gr in zip(got[1], want[1], strict=True):
        assert np.isfinite(np.asarray(gs)).all()
        # t = 100 scales float32 rounding in the logits (~1e-5) into the gradients.
        _assert_rel(gs, gr, "grad", tol=1e-4)


# --------------------------------------------------------------------------------------
# Memory: per-device temp bytes must not grow with the number of devices for the ring.
# --------------------------------------------------------------------------------------

MEM_B, MEM_D = 256, 64  # local rows per device, embedding width


@functools.cache
def _compiled(name: str, n: int, **kwargs):
    fn = create_loss(name, mesh=_mesh((n,), ("data",)), **kwargs)
    x = jax.ShapeDtypeStruct((MEM_B * n, MEM_D), jnp.float32)
    s = jax.ShapeDtypeStruct((), jnp.float32)
    grad = jax.value_and_grad(lambda *a: fn(*a)[0], argnums=(0, 1, 2, 3))
    return jax.jit(grad).lower(x, x, s, s).compile()


def _temp_bytes(name: str, n: int, **kwargs) -> int:
    analysis = _compiled(name, n, **kwargs).memory_analysis()
    if analysis is None:  # not on this backend; nothing honest to compare
        pytest.skip("compiled.memory_analysis() unavailable on this backend")
    return int(analysis.temp_size_in_bytes)


def test_ring_memory_does_not_grow_with_devices():
    ring = {n: _temp_bytes("sigmoid_chunked", n) for n in (1, 2, 4, 8)}
    # n = 2 is the unidirectional program (both directions reach the same neighbour).
    bidi = {n: _temp_bytes("sigmoid_chunked", n, bidirectional=True) for n in (1, 4, 8)}
    gather = {n: _temp_bytes("softmax_sharded", n) for n in (1, 2, 4, 8)}
    softmax_ring = {n: _temp_bytes("softmax_chunked", n) for n in (1, 2, 4, 8)}
    print(f"\ntemp bytes at b={MEM_B}, D={MEM_D}: ring {ring}, bidi {bidi}, gather {gather}, "
          f"softmax ring {softmax_ring}")
    assert ring[8] < 1.10 * ring[1], ring
    assert max(ring.values()) < 1.10 * min(ring.values()), ring
    # The softmax ring is flat from 2 devices on; on 1, XLA fuses the single-trip ring
    # into a smaller program (fewer live blocks), so 1 -> 2 is a step, not a trend.
    assert max(softmax_ring[n] for n in (2, 4, 8)) < 1.10 * softmax_ring[2], softmax_ring
    assert softmax_ring[8] < gather[8] / 4, (softmax_ring, gather)
    # Bidirectional holds two blocks per step (one per direction) once n > 2; flat after.
    assert bidi[8] < 1.10 * bidi[4], bidi
    assert bidi[8] < 2.0 * bidi[1], bidi
    # The all-gather form does grow (b x B logits), so this test can tell them apart.
    assert gather[8] > 4 * gather[1], gather


def test_ring_program_size_does_not_grow_with_devices():
    """fori_loop: the ring's HLO has the same collective-permute count for 4 and 8."""
    counts = {
        n: _compiled("sigmoid_chunked", n).as_text().count("collective-permute(") for n in (4, 8)
    }
    assert counts[4] == counts[8], counts


# --------------------------------------------------------------------------------------
# Bad input.
# --------------------------------------------------------------------------------------


def test_unknown_loss_name_lists_known_names():
    with pytest.raises(ValueError, match="sigmoid_chunked") as info:
        create_loss("triplet")
    assert all(name in str(info.value) for name in LOSS_NAMES)


@pytest.mark.parametrize("name", ["softmax_sharded", "softmax_chunked", "sigmoid_chunked"])
def test_sharded_loss_without_mesh(name):
    with pytest.raises(ValueError, match="mesh"):
        create_loss(name)


def test_bad_options():
    mesh = _mesh((2,), ("data",))
    with pytest.raises(ValueError, match="unexpected"):
        create_loss("softmax_sharded", mesh=mesh, bidirectional=True)
    with pytest.raises(ValueError, match="batch_axes"):
        create_loss("sigmoid_chunked", mesh=mesh, batch_axes=("model",))
    zimg = jnp.ones((4, 2)) / np.sqrt(2)
    with pytest.raises(ValueError, match="bias"):
        sigmoid_loss(zimg, zimg, T, None)
    with pytest.raises(ValueError, match="tile must be an integer >= 0"):
        create_loss("softmax_chunked", mesh=mesh, tile=-1)
    ring = create_loss("sigmoid_chunked", mesh=mesh, tile=3)
    rows = jnp.ones((16, 2)) / np.sqrt(2)  # 8 rows per device
    with pytest.raises(ConfigError, match="'loss.tile': 3 does not divide the 8 text rows"):
        jax.eval_shape(ring, rows, rows, T, BIAS)
    assert set(LOSS_NAMES) == {"softmax", "softmax_sharded", "softmax_chunked", "sigmoid",
                               "sigmoid_chunked",
                               "hn_nce", "debiased_softmax", "macl"}
