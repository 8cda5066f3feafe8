"""FLIP masking (model.image.mask_ratio, train.unmask_from): the masked tower equals a
gather by hand, the mask is a function of (seed, step) on any mesh, sharded and GradCache
steps equal one device. (The loop's switch to the unmasked phase, resumed exactly across
it: test_resume.py's resume past the first epoch runs with FLIP on.)"""


import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from helpers import synthetic_batches, tiny_config
from test_train_step import run_steps

from contrastive_jax.config import validate
from contrastive_jax.errors import ConfigError
from contrastive_jax.models.vit import ViT
from contrastive_jax.parallel.mesh import batch_sharding, create_mesh
from contrastive_jax.train.step import flip_noise

FLIP = {"image": {"mask_ratio": 0.5}}


def _vit(pool, mask_ratio):
    return ViT(width=32, depth=2, mlp_dim=64, num_heads=2, patch_size=7, image_size=28,
               channels=1, pool=pool, mask_ratio=mask_ratio, rngs=nnx.Rngs(0))


def _by_hand(vit, images, noise):
    """The masked tower written out: patches + positions, then each image's kept patches
    picked one by one in a Python loop (lowest noise first), then the encoder and pool."""
    x = vit.embedding(images)
    x = x.reshape(x.shape[0], -1, x.shape[-1]) + vit.pos_embedding[...]
    x, noise = np.asarray(x), np.asarray(noise)
    kept = np.stack([np.stack([x[i, j] for j in sorted(range(x.shape[1]),
                                                     key=lambda j: noise[i, j])[:8]])
                     for i in range(x.shape[0])])
    tokens = jnp.asarray(kept)
    if vit.pool == "cls":
        tokens = jnp.concatenate([jnp.broadcast_to(vit.cls[...], (len(kept), 1, 32)),
                                  tokens], axis=1)
    tokens = vit.encoder(tokens)
    if vit.pool == "map":
        return vit.map_head(tokens)
    return tokens[:, 0] if vit.pool == "cls" else tokens.mean(axis=1)


@pytest.mark.parametrize("pool", ["gap", "map", "cls"])
def test_masked_tower_equals_the_gather_by_hand(pool):
    vit = _vit(pool, 0.5)  # 16 patches, 8 kept
    images = jax.random.normal(jax.random.key(1), (3, 28, 28, 1))
    noise = jax.random.uniform(jax.random.key(2), (3, 16))
    pooled, tokens = vit(images, return_tokens=True, mask_noise=noise)
    assert tokens.shape == (3, 8, 32)
    np.testing.assert_allclose(pooled, _by_hand(vit, images, noise), atol=1e-5)
    # Without noise (evals, exports) every patch is kept: the unmasked model's output.
    plain = _vit(pool, 0.0)
    np.testing.assert_array_equal(vit(images), plain(images))
    np.testing.assert_array_equal(plain(images, mask_noise=noise), plain(images))


def test_mask_noise_is_a_function_of_seed_and_step_on_any_mesh():
    one = jax.jit(lambda s: flip_noise(0, s, 16, 16))(jnp.int32(3))
    mesh = create_mesh(tiny_config().mesh, devices=jax.devices()[:8])
    eight = jax.jit(lambda s: flip_noise(0, s, 16, 16),
                    out_shardings=batch_sharding(mesh))(jnp.int32(3))
    np.testing.assert_array_equal(np.asarray(eight), np.asarray(one))
    assert not np.array_equal(flip_noise(0, jnp.int32(4), 16, 16), one)
    assert not np.array_equal(flip_noise(1, jnp.int32(3), 16, 16), one)


def test_masked_steps_on_eight_devices_in_micro_batches_match_one_device():
    batches = synthetic_batches(3, 16)
    config = tiny_config(model=FLIP, loss={"name": "sigmoid_chunked"})
    state1, hist1 = run_steps(config, jax.devices()[:1], batches)
    micro = tiny_config(model=FLIP, loss={"name": "sigmoid_chunked"},
                        train={"microbatches": 2})
    state_micro, hist_micro = run_steps(micro, jax.devices()[:8], batches)
    loss1 = [m["train/loss"] for m in hist1]
    np.testing.assert_allclose([m["train/loss"] for m in hist_micro], loss1, rtol=1e-5)
    # 8 devices, each micro-batch's noise split with its images: the 1-device run.
    for path, a in jax.tree_util.tree_leaves_with_path(jax.device_get(state_micro.params)):
        name = jax.tree_util.keystr(path)
        if "['key']['bias']" in name:  # exact gradient 0: Adam steps on rounding noise
            continue
        b = _leaf(jax.device_get(state1.params), path)
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6, err_msg=name)
    # The mask really acts in the step, and the unmasked step of train.unmask_from is the
    # plain model's step exactly.
    plain = tiny_config(loss={"name": "sigmoid_chunked"})
    _, plain_hist = run_steps(plain, jax.devices()[:1], batches[:2])
    assert abs(plain_hist[0]["train/loss"] - loss1[0]) > 1e-4
    _, unmasked_hist = run_steps(config, jax.devices()[:1], batches[:2], masked=False)
    assert unmasked_hist == plain_hist


def _leaf(tree, path):
    for key in path:
        tree = tree[key.key]
    return tree


def test_bad_masking_keys_are_one_line_errors():
    for sections, message in (
            ({"model": {"image": {"mask_ratio": 1.0}}}, "'model.image.mask_ratio' must be in"),
            ({"train": {"unmask_from": 3}}, "'train.unmask_from' needs"),
            ({"model": FLIP, "train": {"unmask_from": -1}}, "'train.unmask_from' must be")):
        with pytest.raises(ConfigError, match=message):
            validate(tiny_config(**sections))
