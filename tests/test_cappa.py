"""CapPa: the decoder's masks, the caption loss against a per-example loop, zero-shot by
scoring against brute force, the parallel-prediction draw, and a sharded step."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from helpers import FASHION_TEST, synthetic_batches, tiny_cappa_config
from test_train_step import assert_eight_devices_match_one

from contrastive_jax.config import validate
from contrastive_jax.errors import ConfigError
from contrastive_jax.evaluate.zeroshot import trim_pad_columns
from contrastive_jax.models import create_model
from contrastive_jax.models.decoder import Decoder, self_attention_mask
from contrastive_jax.train.step import parallel_draw


def _decoder(**kw):
    return Decoder(width=32, depth=2, mlp_dim=64, num_heads=2, vocab_size=20, max_len=6,
                   memory_width=24, dtype="float32", param_dtype="float32",
                   rngs=nnx.Rngs(0), **kw)


def _untrained_head(decoder):
    # The head starts at zero (uniform predictions); give it weights so logits vary.
    decoder.head.kernel[...] = jax.random.normal(jax.random.key(9), decoder.head.kernel.shape)


@pytest.fixture
def decoder():
    d = _decoder()
    _untrained_head(d)
    return d


def _inputs(seed=0):
    rng = np.random.default_rng(seed)
    targets = jnp.asarray(rng.integers(1, 20, size=(3, 6)), jnp.int32)
    memory = jnp.asarray(rng.normal(size=(3, 5, 24)), jnp.float32)
    return targets, memory


def test_decoder_shapes_and_masks(decoder):
    targets, memory = _inputs()
    causal, parallel = jnp.zeros(3, bool), jnp.ones(3, bool)
    logits = decoder(targets, memory, causal)
    assert logits.shape == (3, 6, 20) and logits.dtype == jnp.float32
    mask = self_attention_mask(jnp.array([False, True]), 4)
    assert mask.shape == (2, 1, 4, 4)
    np.testing.assert_array_equal(mask[0, 0], np.tril(np.ones((4, 4), bool)))
    assert bool(mask[1].all())
    # Teacher forcing: position i sees targets < i only, so changing the last target
    # moves no logit; the first target moves every later position's logits.
    later = targets.at[:, -1].set((targets[:, -1] + 1) % 20)
    np.testing.assert_allclose(decoder(later, memory, causal), logits, atol=1e-6)
    earlier = targets.at[:, 0].set((targets[:, 0] + 1) % 20)
    assert not np.allclose(decoder(earlier, memory, causal)[:, 1:], logits[:, 1:])
    # Parallel prediction: the input is all MASK, so targets move nothing at all, and the
    # rows differ from teacher forcing.
    par = decoder(targets, memory, parallel)
    np.testing.assert_allclose(decoder(earlier, memory, parallel), par, atol=1e-6)
    assert not np.allclose(par, logits)
    np.testing.assert_array_equal(decoder.inputs(targets, parallel), decoder.mask_id)
    np.testing.assert_array_equal(decoder.inputs(targets, causal)[:, 0], decoder.bos_id)


def test_cross_attention_ignores_masked_image_tokens(decoder):
    targets, memory = _inputs()
    keep = jnp.array([True, True, False, True, False])[None].repeat(3, 0)
    logits = decoder(targets, memory, jnp.zeros(3, bool), keep)
    noisy = memory.at[:, 2].set(1e3).at[:, 4].set(-7.0)
    np.testing.assert_allclose(decoder(targets, noisy, jnp.zeros(3, bool), keep), logits,
                               atol=1e-5)
    assert not np.allclose(decoder(targets, noisy, jnp.zeros(3, bool)), logits)


def _cappa():
    model = create_model(tiny_cappa_config().model, rngs=nnx.Rngs(0))
    _untrained_head(model.decoder)
    return model


def test_caption_loss_equals_a_per_example_loop():
    model = _cappa()
    batch = synthetic_batches(1, 5)[0]
    images, targets = jnp.asarray(batch["image"]), jnp.asarray(batch["text"])
    parallel = jnp.array([True, False, True, False, False])
    loss, aux = model.caption_loss(images, targets, parallel)
    one = nnx.jit(lambda m, x, t, p: m.caption_logits(x, t, p))  # one example at a time
    total, count, hits = 0.0, 0, 0
    for i in range(5):
        logits = np.asarray(one(model, images[i:i + 1], targets[i:i + 1],
                                parallel[i:i + 1]))[0]
        for pos, token in enumerate(np.asarray(targets[i])):
            if token == 0:
                continue
            row = logits[pos] - logits[pos].max()
            total -= row[token] - np.log(np.exp(row).sum())
            count += 1
            hits += int(np.argmax(logits[pos]) == token)
    np.testing.assert_allclose(loss, total / count, rtol=1e-5)
    np.testing.assert_allclose(aux["token_accuracy"], hits / count, rtol=1e-6)


def test_scoring_zero_shot_equals_brute_force():
    model = _cappa()
    images = jnp.asarray(synthetic_batches(1, 3, seed=4)[0]["image"])
    rng = np.random.default_rng(1)
    prompts = rng.integers(3, 64, size=(4, 2, 8)).astype(np.int32)  # 4 classes x 2 templates
    prompts[..., 5:] = 0  # right padding
    prompts[1, 0, 3:] = 0  # one shorter prompt
    trimmed = jnp.asarray(trim_pad_columns(prompts.reshape(8, 8)).reshape(4, 2, -1))
    brute = np.zeros((3, 4, 2))  # each (image, class, template) prompt's log-likelihood
    one = nnx.jit(lambda m, x, t: jax.nn.log_softmax(
        m.caption_logits(x, t, jnp.zeros(1, bool))[0], axis=-1))  # one pair at a time
    for i in range(3):
        for c in range(4):
            for t in range(2):
                logp = np.asarray(one(model, images[i:i + 1], jnp.asarray(prompts[c, t][None])))
                brute[i, c, t] = sum(float(logp[p, k]) for p, k in enumerate(prompts[c, t]) if k)
    mixture = np.log(np.exp(brute).mean(axis=-1))  # log of the templates' mean likelihood
    np.testing.assert_allclose(model.class_log_likelihoods(images, trimmed), mixture,
                               rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(model.class_log_likelihoods(images, trimmed, "log_likelihood"),
                               brute.mean(axis=-1), rtol=1e-5, atol=1e-5)
    assert trim_pad_columns(prompts.reshape(8, 8)).shape == (8, 5)


def test_parallel_draw_is_a_fraction_fixed_by_seed_and_step():
    draw = parallel_draw(0, jnp.int32(7), 4000, 0.75)
    assert abs(float(draw.mean()) - 0.75) < 0.03
    np.testing.assert_array_equal(draw, parallel_draw(0, jnp.int32(7), 4000, 0.75))
    assert not np.array_equal(draw, parallel_draw(0, jnp.int32(8), 4000, 0.75))
    assert not parallel_draw(0, jnp.int32(7), 100, 0.0).any()


def test_sharded_cappa_steps_equal_one_device():
    hist1 = assert_eight_devices_match_one(tiny_cappa_config(), synthetic_batches(5, 16))
    assert hist1[-1]["train/loss"] < hist1[0]["train/loss"] and "train/t" not in hist1[0]


@pytest.mark.parametrize("sections, key", [
    ({"train": {"microbatches": 2}}, "train.microbatches"),
    ({"data": {"pad_id": 1}}, "data.pad_id"),
    ({"evals": {"tasks": [{"kind": "embedding_stats", "name": "x", "data": FASHION_TEST}]}},
     "evals retrieval and embedding_stats tasks"),
    ({"data": {"max_len": 9}}, "data.max_len"),
    ({"model": {"decoder": {"parallel_fraction": 1.5}}}, "model.decoder.parallel_fraction"),
])
def test_senseless_cappa_configs_are_one_line_errors(sections, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        config = tiny_cappa_config(**sections)
        validate(config)
        create_model(config.model, rngs=nnx.Rngs(0))


def test_bench_step_times_a_captioner():
    from contrastive_jax.bench.train_step import bench_train_step

    row = bench_train_step(tiny_cappa_config(), steps=1)
    assert row["model"] == "cappa" and row["examples_per_sec"] > 0 and row["flops_per_step"] > 0
