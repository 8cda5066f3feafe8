"""Tests for contrastive_jax.models: towers, sizes, two-tower model, registry."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from contrastive_jax.errors import ConfigError
from contrastive_jax.models import (
    SIZES,
    TextTransformer,
    ViT,
    create_model,
    decode_variant,
    default_model_config,
    known_models,
)

TINY = dict(width=32, depth=2, mlp_dim=64, num_heads=4)


def tiny_config(**overrides):
    """Small two-tower config: 8x8 RGB images, 2-layer towers."""
    cfg = default_model_config()
    cfg.embed_dim = 16
    cfg.image.update(variant=None, **TINY, patch_size=4, image_size=8, channels=3)
    cfg.text.update(variant=None, **TINY, vocab_size=50, max_len=12)
    for key, value in overrides.items():
        node = cfg
        *parents, leaf = key.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = value
    return cfg


def batch(n=4, length=8, seed=0):
    """Random images and right-padded tokens with per-row lengths 1..length-1."""
    rng = np.random.default_rng(seed)  # numpy: no per-shape XLA compiles in eager mode
    images = rng.normal(size=(n, 8, 8, 3)).astype(np.float32)
    tokens = rng.integers(1, 50, size=(n, length), dtype=np.int32)
    for i in range(n):
        tokens[i, 1 + (i * 3) % (length - 1):] = 0
    return jnp.asarray(images), jnp.asarray(tokens)


def assert_unit(z, n, d):
    assert z.shape == (n, d) and z.dtype == jnp.float32
    np.testing.assert_allclose(np.linalg.norm(np.asarray(z), axis=-1), 1.0, atol=1e-5)


@pytest.mark.parametrize("pool,posemb", [("map", "learn"), ("gap", "sincos2d"),
                                         ("cls", "learn")])
def test_vit_pools(pool, posemb):
    model = create_model(tiny_config(**{"image.pool": pool, "image.posemb": posemb}),
                         rngs=nnx.Rngs(0))
    assert isinstance(model.img, ViT)
    images, _ = batch()
    pooled, tokens = model.img(images, return_tokens=True)
    assert pooled.shape == (4, 32) and tokens.shape == (4, 4, 32)  # class token dropped
    assert_unit(model.encode_image(images), 4, 16)


@pytest.mark.parametrize("pool", ["last", "first", "mean", "map"])
def test_text_pools_and_padding_invariance(pool):
    model = create_model(tiny_config(**{"text.pool": pool}), rngs=nnx.Rngs(0))
    txt = model.txt
    _, tokens = batch(length=8)
    out = txt(tokens)
    assert out.shape == (4, 32)
    assert_unit(model.encode_text(tokens), 4, 16)
    # Same non-pad tokens, four more pads: identical features.
    longer = jnp.pad(tokens, ((0, 0), (0, 4)))
    np.testing.assert_allclose(txt(longer), out, atol=1e-5)
    # Changing what a pad token embeds to must not change anything either.
    table = txt.embedding.embedding
    table[...] = table[...].at[0].set(100.0)
    np.testing.assert_allclose(txt(tokens), out, atol=1e-5)


def test_last_pool_picks_last_non_pad_token():
    txt = TextTransformer(**TINY, vocab_size=50, max_len=12, pool="last", rngs=nnx.Rngs(0))
    _, tokens = batch(length=8)
    pooled, seq, mask = txt(tokens, return_tokens=True)
    lengths = np.asarray(mask).sum(axis=1)
    assert len(set(lengths.tolist())) > 1  # rows really differ in length
    expected = np.stack([np.asarray(seq)[i, n - 1] for i, n in enumerate(lengths)])
    np.testing.assert_allclose(pooled, expected, atol=1e-6)


def check_tower_size(tower, size):
    assert len(tower.encoder.blocks) == size.depth
    block = tower.encoder.blocks[0]
    assert block.mlp.fc1.kernel.shape == (size.width, size.mlp_dim)
    assert block.attn.query.kernel.shape == (
        size.width, size.num_heads, size.width // size.num_heads)


# Abstract init still traces every initializer, and with jax 0.10 + flax 0.12 that tracing is
# quadratic in model size (jax-ml/jax#40041), so big sizes build the image tower only.
@pytest.mark.parametrize("name", ["mu", "Ti", "S", "M", "B", "L", "So400m"])
def test_named_sizes(name):
    size = SIZES[name]
    vit = nnx.eval_shape(lambda: ViT(**decode_variant(f"{name}/16"), image_size=32,
                                     channels=3, rngs=nnx.Rngs(0)))
    check_tower_size(vit, size)
    assert vit.embedding.kernel.shape == (16, 16, 3, size.width)


def test_named_sizes_text_and_two_tower():
    txt = nnx.eval_shape(lambda: TextTransformer(**decode_variant("B"), vocab_size=100,
                                                 max_len=8, rngs=nnx.Rngs(0)))
    check_tower_size(txt, SIZES["B"])
    cfg = default_model_config()
    cfg.image.variant, cfg.text.variant = "S/14", "mu"
    cfg.image.update(image_size=28, channels=3)
    model = nnx.eval_shape(lambda: create_model(cfg, rngs=nnx.Rngs(0)))
    check_tower_size(model.img, SIZES["S"])
    check_tower_size(model.txt, SIZES["mu"])
    assert model.img.embedding.kernel.shape == (14, 14, 3, 384)
    assert model.txt_head.kernel.shape == (32, cfg.embed_dim)


def test_variant_decoding_and_overrides():
    assert decode_variant("B/16") == dict(width=768, depth=12, mlp_dim=3072, num_heads=12,
                                          patch_size=16)
    assert decode_variant("So400m") == dict(width=1152, depth=27, mlp_dim=4304, num_heads=16)
    cfg = default_model_config()
    cfg.image.update(variant="B/16", depth=2, patch_size=8, image_size=32, channels=3)
    model = nnx.eval_shape(lambda: create_model(cfg, rngs=nnx.Rngs(0)))
    assert len(model.img.encoder.blocks) == 2
    assert model.img.embedding.kernel.shape == (8, 8, 3, 768)


def test_b16_param_count():
    vit = nnx.eval_shape(lambda: ViT(**decode_variant("B/16"), image_size=224, channels=3,
                                     pool="gap", rngs=nnx.Rngs(0)))
    n = sum(math.prod(p.shape) for p in jax.tree.leaves(nnx.state(vit, nnx.Param)))
    assert abs(n - 85.8e6) / 85.8e6 < 0.01, n  # ViT-B/16 without classifier: ~85.8M


def sigmoid_loss(zimg, ztxt, t, b):
    logits = t * zimg @ ztxt.T + b
    labels = 2 * jnp.eye(zimg.shape[0]) - 1
    return -jnp.mean(jax.nn.log_sigmoid(labels * logits))


def test_jit_split_merge_and_all_grads_nonzero():
    model = create_model(tiny_config(), rngs=nnx.Rngs(0))
    graphdef, params = nnx.split(model, nnx.Param)
    assert not nnx.state(model, nnx.Not(nnx.Param))  # params are the whole state
    images, tokens = batch()

    @jax.jit
    def loss_fn(params, images, tokens):
        m = nnx.merge(graphdef, params)
        zimg, ztxt = m(images, tokens)
        return sigmoid_loss(zimg, ztxt, m.temperature(), m.bias())

    loss, grads = jax.value_and_grad(loss_fn)(params, images, tokens)
    eager = sigmoid_loss(*model(images, tokens), model.temperature(), model.bias())
    np.testing.assert_allclose(loss, eager, rtol=1e-5)
    flat = nnx.to_flat_state(grads)
    assert {"t_log", "b"} <= {path[0] for path, _ in flat}
    for path, g in flat:
        g = np.asarray(g[...])
        assert np.all(np.isfinite(g)) and np.any(g != 0), f"zero/NaN grad at {path}"
    # Pads are never used, so the pad token's embedding row gets exactly zero gradient.
    assert not np.any(np.asarray(grads["txt"]["embedding"]["embedding"][...])[0])


def test_bfloat16_compute():
    model = create_model(tiny_config(dtype="bfloat16"), rngs=nnx.Rngs(0))
    assert model.img.encoder.blocks[0].mlp.fc1.kernel.dtype == jnp.float32
    images, tokens = batch()
    zimg, ztxt = jax.jit(lambda i, t: model(i, t))(images, tokens)
    assert_unit(zimg, 4, 16)
    assert_unit(ztxt, 4, 16)
    ref = create_model(tiny_config(), rngs=nnx.Rngs(0))(images, tokens)
    np.testing.assert_allclose(zimg, ref[0], atol=0.1)  # same params, lower precision


def test_temperature_and_bias_inits():
    siglip = create_model(tiny_config(), rngs=nnx.Rngs(0))
    np.testing.assert_allclose(siglip.temperature(), 10.0, rtol=1e-6)
    np.testing.assert_allclose(siglip.bias(), -10.0)
    clip = create_model(tiny_config(temperature_init=1 / 0.07, bias_init=None),
                        rngs=nnx.Rngs(0))
    np.testing.assert_allclose(clip.temperature(), 1 / 0.07, rtol=1e-6)
    assert clip.bias() == 0.0 and clip.bias().dtype == jnp.float32
    assert "b" not in nnx.state(clip, nnx.Param)


def test_head_skipped_only_when_allowed():
    cfg = tiny_config(embed_dim=32, **{"image.head": False, "text.head": True})
    model = create_model(cfg, rngs=nnx.Rngs(0))
    assert model.img_head is None and model.txt_head is not None


@pytest.mark.parametrize("overrides,match", [
    ({"image.image_size": 10}, "'model.image.image_size' .* not divisible by patch_size"),
    ({"image.pool": "max"}, "'model.image.pool': unknown image pool"),
    ({"text.pool": "cls"}, "'model.text.pool': unknown text pool"),
    ({"image.posemb": "rope"}, "'model.image.posemb': unknown posemb"),
    ({"image.posemb": "sincos2d", "image.width": 34, "image.num_heads": 2},
     "'model.image.width' \\(34\\) must be a multiple of 4"),
    ({"image.variant": "XXL/16"}, "'model.image.variant': unknown model variant"),
    ({"text.variant": "B/16"}, "'model.text.variant'.* only image towers"),
    ({"image.width": None}, r"\['model.image.width'\] not set"),
    ({"image.num_heads": 5}, "'model.image.width' \\(32\\) is not divisible by num_heads"),
    ({"text.vocab_size": 1}, "'model.text.vocab_size' must be >= 2"),
    ({"dtype": "float16"}, "'model.dtype': unknown dtype"),
    ({"param_dtype": "int8"}, "'model.param_dtype': unknown dtype"),
    ({"remat": "some"}, "'model.remat': unknown remat"),
    ({"embed_dim": 0}, "'model.embed_dim' must be positive"),
    ({"name": "three_tower"}, "config key 'model.name': unknown model 'three_tower'; known: "),
])
def test_bad_configs_are_one_line_config_errors_naming_the_key(overrides, match):
    with pytest.raises(ConfigError, match=match) as info:
        create_model(tiny_config(**overrides), rngs=nnx.Rngs(0))
    assert "\n" not in str(info.value)


def test_unknown_config_key_and_partial_config():
    with pytest.raises(ConfigError, match="unknown config key 'model.image.colour'"):
        create_model({"image": {"colour": 3}}, rngs=nnx.Rngs(0))
    assert "two_tower" in known_models()
    model = nnx.eval_shape(
        lambda: create_model({"name": "two_tower", "embed_dim": 8}, rngs=nnx.Rngs(0)))
    assert model.img_head.kernel.shape == (32, 8)  # mu width 32 from the defaults


def test_text_pool_final_is_the_unmasked_last_position():
    """big_vision / transformers SigLIP semantics: pads are attended and can be pooled."""
    from contrastive_jax.models import TextTransformer

    def tower(pool):
        return TextTransformer(width=16, depth=1, mlp_dim=32, num_heads=2, vocab_size=32,
                               max_len=6, pool=pool, rngs=nnx.Rngs(0))

    tokens = jnp.array([[5, 6, 1, 0, 0, 0], [7, 8, 9, 10, 11, 1]], jnp.int32)
    final = tower("final")
    pooled, x, mask = final(tokens, return_tokens=True)
    assert bool(mask.all())
    np.testing.assert_array_equal(pooled, x[:, -1])
    # Unlike "last", a shorter padding changes the result of a padded row.
    assert not np.allclose(final(tokens[:, :4])[0], pooled[0])
    last = tower("last")
    np.testing.assert_allclose(last(tokens[:, :4])[0], last(tokens)[0], atol=1e-6)


def _pooled_and_grads(tower, inputs, pruned):
    """A pooling tower's features and d(sum sin features)/d(params), computed by the
    one-query last block (`pruned`) or from the full token output (`return_tokens`)."""
    graphdef, params = nnx.split(tower)

    def features(params):
        model = nnx.merge(graphdef, params)
        return model(inputs) if pruned else model(inputs, return_tokens=True)[0]

    value = jax.jit(features)(params)
    grads = jax.jit(jax.grad(lambda p: jnp.sum(jnp.sin(features(p)))))(params)
    flops = jax.jit(features).lower(params).cost_analysis()["flops"]
    return value, grads, flops


def assert_same_grads(grads, want):
    # Relative to the largest gradient: some are zero in exact arithmetic (key biases,
    # which softmax ignores) and come out as rounding noise either way.
    scale = max(float(jnp.max(jnp.abs(g))) for g in jax.tree.leaves(want))
    for got, expected in zip(jax.tree.leaves(grads), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5 * scale)


@pytest.mark.parametrize("pool,causal,scan_layers,remat", [
    ("last", False, False, "none"), ("last", True, True, "full"),
    ("final", False, True, "none")])
def test_one_position_pools_compute_only_that_query_in_the_last_block(
        pool, causal, scan_layers, remat):
    """The pooled feature (and every param's gradient) equals the full tower's, at fewer
    FLOPs: the last block computes the pooled position's query alone."""
    txt = TextTransformer(**TINY, vocab_size=50, max_len=12, pool=pool, causal=causal,
                          scan_layers=scan_layers, remat=remat, rngs=nnx.Rngs(0))
    _, tokens = batch(length=8)
    full, full_grads, full_flops = _pooled_and_grads(txt, tokens, pruned=False)
    pooled, grads, flops = _pooled_and_grads(txt, tokens, pruned=True)
    np.testing.assert_allclose(pooled, full, atol=2e-6)
    assert_same_grads(grads, full_grads)
    if not scan_layers:  # XLA's cost analysis counts a scan's body once, whatever its length
        assert flops < 0.9 * full_flops


def test_vit_cls_pool_computes_only_the_class_query_in_the_last_block():
    vit = ViT(**TINY, patch_size=4, image_size=8, channels=3, pool="cls", rngs=nnx.Rngs(0))
    images, _ = batch()
    full, full_grads, full_flops = _pooled_and_grads(vit, images, pruned=False)
    pooled, grads, flops = _pooled_and_grads(vit, images, pruned=True)
    np.testing.assert_allclose(pooled, full, atol=2e-6)
    assert_same_grads(grads, full_grads)
    assert flops < 0.9 * full_flops


def test_a_tower_without_blocks_pools_the_right_position():
    txt = TextTransformer(width=16, depth=0, mlp_dim=32, num_heads=2, vocab_size=32,
                          max_len=6, pool="last", rngs=nnx.Rngs(0))
    tokens = jnp.array([[5, 6, 1, 0, 0, 0], [7, 8, 9, 10, 11, 1]], jnp.int32)
    np.testing.assert_array_equal(txt(tokens), txt(tokens, return_tokens=True)[0])
