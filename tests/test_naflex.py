"""The NaFlex image tower: padding masked out everywhere, the position table resized as
big_vision and torch resize it, scan == unrolled, and the two-tower config switch."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from contrastive_jax.errors import ConfigError
from contrastive_jax.models import create_model
from contrastive_jax.models.layer_stack import stack_layers
from contrastive_jax.models.naflex import (
    NaFlexImages,
    NaFlexViT,
    patchify,
    posemb_resize_weights,
)

P, C = 4, 3


def _tower(pool="map", scan=False, remat="none", seed=0):
    return NaFlexViT(width=32, depth=2, mlp_dim=48, num_heads=4, patch_size=P, image_size=16,
                     channels=C, pool=pool, scan_layers=scan, remat=remat,
                     rngs=nnx.Rngs(seed))


def _perturb(model, seed=1):
    """Random non-zero biases etc., so that every parameter matters."""
    state = nnx.state(model, nnx.Param)
    rng = np.random.default_rng(seed)
    state = jax.tree.map(lambda x: x + 0.1 * rng.standard_normal(x.shape, np.float32), state)
    nnx.update(model, state)
    return model


def _images(shapes, length, seed=0, pad_value=None):
    """Random images of the given patch grids, padded to `length` patches (padding filled
    with `pad_value`, or noise when None)."""
    rng = np.random.default_rng(seed)
    patches = rng.standard_normal((len(shapes), length, P * P * C)).astype(np.float32)
    mask = np.zeros((len(shapes), length), bool)
    for i, (h, w) in enumerate(shapes):
        mask[i, :h * w] = True
        if pad_value is not None:
            patches[i, h * w:] = pad_value
    return NaFlexImages(jnp.asarray(patches), jnp.asarray(mask),
                        jnp.asarray(shapes, jnp.int32))


@nnx.jit
def _run(model, images):
    return model(images)


SHAPES = [(4, 4), (2, 7), (6, 2), (1, 1)]


@pytest.mark.parametrize("pool", ["map", "gap"])
def test_embedding_ignores_padding_length_and_content(pool):
    model = _perturb(_tower(pool))
    short = _images(SHAPES, 16, pad_value=0.0)
    base = np.asarray(_run(model, short))
    # The same images at N=24, the padding filled with noise: the same embeddings.
    long = _images(SHAPES, 24)
    long = long._replace(patches=long.patches.at[:, :16].set(
        jnp.where(short.mask[..., None], short.patches, long.patches[:, :16])))
    np.testing.assert_allclose(np.asarray(_run(model, long)), base, atol=1e-5)
    # An image alone, with exactly its own patches (no padding at all): the same.
    for i, (h, w) in [(1, SHAPES[1])]:
        alone = NaFlexImages(short.patches[i:i + 1, :h * w], short.mask[i:i + 1, :h * w],
                             short.shapes[i:i + 1])
        np.testing.assert_allclose(np.asarray(_run(model, alone))[0], base[i], atol=1e-5)


def test_mask_is_what_hides_the_padding():
    """Without the mask, noise in the padding changes the embedding (the test above can
    fail), and the mask hides it in attention too, not only in the pool."""
    model = _perturb(_tower("gap"))
    clean, noisy = _images(SHAPES, 24, pad_value=0.0), _images(SHAPES, 24, pad_value=None)
    noisy = noisy._replace(patches=jnp.where(clean.mask[..., None], clean.patches,
                                             noisy.patches))
    unmasked = [NaFlexImages(x.patches, jnp.ones_like(x.mask), x.shapes) for x in (clean,
                                                                                    noisy)]
    assert np.abs(np.asarray(_run(model, unmasked[0]) - _run(model, unmasked[1]))).max() > 1e-3
    with_tokens = nnx.jit(lambda m, x: m(x, return_tokens=True))
    _, tokens = with_tokens(model, clean)
    _, tokens_noisy = with_tokens(model, noisy)
    real = np.asarray(clean.mask)
    np.testing.assert_allclose(np.asarray(tokens)[real], np.asarray(tokens_noisy)[real],
                               atol=1e-5)


def test_plain_images_are_patchified_in_transformers_layout():
    model = _perturb(_tower())
    rng = np.random.default_rng(3)
    images = jnp.asarray(rng.standard_normal((2, 8, 12, C)), jnp.float32)
    got = patchify(images, P)
    assert got.patches.shape == (2, 6, P * P * C) and got.shapes.tolist() == [[2, 3]] * 2
    # Patch (row 1, column 2), its pixel (dy=3, dx=1), channel 2 (transformers' order).
    np.testing.assert_array_equal(got.patches[0, 1 * 3 + 2, (3 * P + 1) * C + 2],
                                  images[0, 1 * P + 3, 2 * P + 1, 2])
    np.testing.assert_allclose(np.asarray(_run(model, images)), np.asarray(_run(model, got)),
                               atol=1e-6)
    # SigLIP 2's masked prediction: replaced patches are the token, whatever the pixels.
    token, replace = jnp.full((32,), 0.3), jnp.zeros((2, 6), bool).at[:, 4].set(True)
    noisy = images.at[:, 4:8, 4:8].set(9.0)  # patch (1, 1) = index 4
    masked = nnx.jit(lambda m, x: m(x, replace=replace, mask_token=token))
    np.testing.assert_allclose(np.asarray(masked(model, noisy)),
                               np.asarray(masked(model, images)), atol=1e-6)


@pytest.mark.parametrize("shape", [(2, 7), (9, 3), (16, 1)])
def test_position_resize_is_big_vision_scale_and_translate(shape):
    """Our weights applied to a table == big_vision's `_pos_emb_resize` (jax's bilinear
    antialiased scale_and_translate), and the table's own grid is the identity."""
    grid, d = 4, 5
    table = jax.random.normal(jax.random.key(0), (grid, grid, d))
    h, w = shape
    weights = posemb_resize_weights(jnp.asarray([shape]), grid, h * w + 3)[0]
    ours = (weights @ table.reshape(-1, d))[:h * w].reshape(h, w, d)
    theirs = jax.image.scale_and_translate(
        table, (h, w, d), (0, 1), jnp.asarray(shape, jnp.float32) / grid,
        jnp.zeros(2), method="bilinear", antialias=True)
    np.testing.assert_allclose(np.asarray(ours), np.asarray(theirs), atol=1e-5)
    # Padding positions repeat the first position (as transformers' do).
    np.testing.assert_array_equal(np.asarray(weights[h * w:]), np.asarray(weights[:1].repeat(
        3, axis=0)))
    same = posemb_resize_weights(jnp.asarray([[grid, grid]]), grid, grid * grid)[0]
    np.testing.assert_allclose(np.asarray(same), np.eye(grid * grid), atol=1e-6)


def test_position_resize_is_torch_interpolate():
    torch = pytest.importorskip("torch")
    grid, d = 4, 3
    table = np.random.default_rng(0).standard_normal((grid, grid, d)).astype(np.float32)
    for h, w in [(2, 7), (9, 3)]:
        weights = np.asarray(posemb_resize_weights(jnp.asarray([[h, w]]), grid, h * w)[0])
        theirs = torch.nn.functional.interpolate(
            torch.from_numpy(table).permute(2, 0, 1)[None], size=(h, w), mode="bilinear",
            align_corners=False, antialias=True)[0].permute(1, 2, 0).reshape(h * w, d)
        np.testing.assert_allclose(weights @ table.reshape(-1, d), theirs.numpy(), atol=1e-5)


def test_scan_equals_unrolled_with_remat_and_gradients():
    unrolled = _perturb(_tower(scan=False))
    scanned = _tower(scan=True, remat="dots_saveable")
    params = nnx.state(unrolled, nnx.Param).to_pure_dict()
    nnx.update(scanned, jax.tree.map(jnp.asarray, stack_layers(params)))
    batch = _images(SHAPES, 20)

    @nnx.jit
    def value_and_grad(model):
        return nnx.value_and_grad(lambda m: jnp.sum(m(batch) ** 2))(model)

    (v_unrolled, g_unrolled), (v_scanned, g_scanned) = (value_and_grad(m) for m in (
        unrolled, scanned))
    np.testing.assert_allclose(float(v_scanned), float(v_unrolled), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(_run(scanned, batch)),
                               np.asarray(_run(unrolled, batch)), atol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b),
                                                         atol=1e-4),
                 stack_layers(g_unrolled.to_pure_dict()), g_scanned.to_pure_dict())


def test_two_tower_switch_and_bad_configs():
    model = create_model({"image": {"naflex": True, "image_size": 16, "channels": 3,
                                    "pool": "gap"}}, rngs=nnx.Rngs(0))
    assert isinstance(model.img, NaFlexViT)
    z = nnx.jit(lambda m, x: m.encode_image(x))(model, _images(SHAPES, 16))
    assert z.shape == (4, 128)
    np.testing.assert_allclose(np.linalg.norm(np.asarray(z), axis=-1), 1.0, atol=1e-5)
    for bad in ({"pool": "cls"}, {"posemb": "sincos2d"}, {"mask_ratio": 0.5},
                {"image_size": (16, 20)}):
        with pytest.raises(ConfigError):
            create_model({"image": {"naflex": True, "image_size": 16, **bad}},
                         rngs=nnx.Rngs(0))


def test_train_steps_on_8_device_mesh_shard_scan_and_remat():
    """The run's own train step on data x fsdp x model = 2 x 2 x 2 with the NaFlex tower
    (fed the demo's square images): scanned + rematerialised == unrolled, params split."""
    from helpers import synthetic_batches, tiny_config
    from test_scan_layers import _run

    from contrastive_jax.models.state import ModelDef

    def config(scan, remat="none"):
        return tiny_config(model={"scan_layers": scan, "remat": remat, "image": {
            "naflex": True, "pool": "map", "depth": 2}}, mesh={
            "data": 2, "fsdp": 2, "model": 2, "fsdp_min_size": 0})

    params = jax.device_get(ModelDef.init(config(False).model, jax.random.key(0))[0])
    batches = synthetic_batches(2, 16, seed=3)
    devices = jax.devices()[:8]
    ref, _, _ = _run(config(False), params, batches, devices)
    got, _, specs = _run(config(True, "full"), stack_layers(params), batches, devices)
    np.testing.assert_allclose(got, ref, rtol=1e-5)
    patch = specs["['img']['embedding']['kernel']"]
    assert {"fsdp", "model"} & set(patch), patch  # the patch Linear is sharded too
