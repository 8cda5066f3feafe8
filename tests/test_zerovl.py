"""ZeroVL (Cui et al. 2022): debiased sampling (one source per batch) and coin-flipping
mixup; the sharded losses' gradients on mixed batches against a soft-target reference, 8
devices against 1, and an exact resume of a run with both switched on."""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import synthetic_batches, tiny_config, train_cut_and_resumed
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

# The corpus (two TFRecord sources: labels < 100 and >= 100) and stream helpers.
from test_data_sources import assert_same, batches, corpus, data_cfg, tfrecords, tokenizer
from test_train_step import run_steps

from contrastive_jax.config import validate
from contrastive_jax.data import mixture
from contrastive_jax.errors import CheckpointError, ConfigError
from contrastive_jax.losses import create_loss
from contrastive_jax.losses import mixup as zerovl
from contrastive_jax.train.stream_progress import StreamProgress

__all__ = ["corpus", "tokenizer"]  # fixtures used here


def _sources(labels_of_batch) -> set[bool]:
    return {int(x) >= 100 for x in labels_of_batch}


def test_debiased_batches_are_whole_draws_of_one_source_by_weight(corpus, tokenizer):
    cfg = data_cfg(tfrecords(corpus, weight=3.0), tfrecords(corpus, "b", weight=1.0),
                   debiased_sampling=True, logical_streams=0)  # the default: several streams
    full = batches(cfg, tokenizer, 40)
    assert all(len(_sources(b["label"])) == 1 for b in full)  # never mixed in a batch
    share_a = np.mean([_sources(b["label"]) == {False} for b in full])
    assert 0.55 < share_a < 0.95, share_a
    assert_same(full[23:26], batches(cfg, tokenizer, 3, start_example=4 * 23))
    # Two processes: each one's batch n comes from the same source, so the global batch
    # does too; and each resumes exactly.
    parts = [batches(cfg, tokenizer, 12, batch=8, process_index=p, process_count=2)
             for p in range(2)]
    for b0, b1 in zip(*parts, strict=True):
        assert _sources(b0["label"]) == _sources(b1["label"]) and len(_sources(b0["label"])) == 1
    for p in range(2):
        assert_same(parts[p][5:8], batches(cfg, tokenizer, 3, batch=8, process_index=p,
                                           process_count=2, start_example=8 * 5))


def test_grouped_mixture_positions_match_the_choice_stream():
    weights, group = (0.2, 0.5, 0.3), 7
    for position in (0, 7 * 4096 + 21, 7 * 4096 + 25):  # at, and inside, a group
        choices = np.fromiter(mixture.mixture_choices(weights, 3, 0, group)
                              .take(position + 7 * 30).as_numpy_iterator(), np.int64)
        assert (choices[: 7 * 30].reshape(30, 7) == choices[: 7 * 30: 7, None]).all()
        assert mixture.mixture_positions(weights, 3, position, group) == np.bincount(
            choices[:position], minlength=3).tolist()
        tail = mixture.mixture_choices(weights, 3, position, group).take(7 * 30)
        assert list(tail.as_numpy_iterator()) == choices[position:].tolist()


def test_debiased_resume_with_another_batch_size_or_sampling_is_refused():
    two = ({"kind": "tfrecord", "pattern": "a"}, {"kind": "tfrecord", "pattern": "b"})
    config = tiny_config(data={"debiased_sampling": True, "sources": two},
                         train={"batch_size": 8})
    meta = {"stream": {"examples_read": 10 * 16, "debiased_sampling": True},
            "examples_seen": 10 * 16}
    with pytest.raises(CheckpointError, match=r"read 16 examples per step.*'train.batch_size'"):
        StreamProgress.resume(meta, 10, config)
    config.train.batch_size = 16
    progress = StreamProgress.resume(meta, 10, config)
    assert progress.examples_read == 160 and progress.checkpoint_state()["debiased_sampling"]
    config.data.debiased_sampling = False  # switched at the resume: refused
    with pytest.raises(CheckpointError, match=r"debiased_sampling=True.*'data.debiased_sampling'"):
        StreamProgress.resume(meta, 10, config)


def test_mixup_draws_are_per_step_and_follow_the_coin():
    draws = np.stack([zerovl.draw(jax.random.fold_in(jax.random.key(0), s), 0.6, 0.5, 0.1)
                      for s in range(400)])
    image, text, target = draws.T
    mixed = target < 1
    assert 0.5 < mixed.mean() < 0.7
    # A mixed step mixes exactly one side, with the target's alpha; an unmixed one neither.
    assert ((image < 1) ^ (text < 1) == mixed).all()
    np.testing.assert_array_equal(np.minimum(image, text), target)
    assert 0.35 < (image < 1)[mixed].mean() < 0.65
    # Beta(0.1, 0.1) puts most of its mass near 0 and 1.
    assert np.mean((target[mixed] < 0.1) | (target[mixed] > 0.9)) > 0.6


def _soft_reference(name, zimg, ztxt, t, b, alpha):
    """The loss with soft targets Y = alpha I + (1 - alpha) P written out (P: the reversal)."""
    n = zimg.shape[0]
    y = alpha * jnp.eye(n) + (1 - alpha) * jnp.eye(n)[::-1]
    sims = zimg @ ztxt.T
    if name == "softmax":
        logits = t * sims
        rows = -jnp.sum(y * jax.nn.log_softmax(logits, axis=1), axis=1)
        cols = -jnp.sum(y.T * jax.nn.log_softmax(logits.T, axis=1), axis=1)
        return 0.5 * (rows.mean() + cols.mean())
    logits = t * sims + b
    nll = y * jax.nn.log_sigmoid(logits) + (1 - y) * jax.nn.log_sigmoid(-logits)
    return -jnp.sum(nll, axis=1).mean()


@pytest.mark.parametrize("name,reference,options", [
    ("softmax_sharded", "softmax", {}),
    ("softmax_chunked", "softmax", {"bidirectional": True}),
    ("sigmoid_chunked", "sigmoid", {"bidirectional": False, "tile": 2}),
])
def test_mixed_sharded_losses_equal_the_soft_target_reference(name, reference, options):
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:8]), ("data",))
    loss_fn = create_loss(name, mesh=mesh, batch_axes=("data",), **options)
    rng = np.random.default_rng(0)
    z = rng.normal(size=(2, 32, 16)).astype(np.float32)
    zimg, ztxt = (jnp.asarray(x / np.linalg.norm(x, axis=1, keepdims=True)) for x in z)
    rows = NamedSharding(mesh, P("data"))
    zimg, ztxt = jax.device_put(zimg, rows), jax.device_put(ztxt, rows)
    t, b = jnp.float32(7.0), jnp.float32(-3.0)
    # alpha is traced: one program takes both branches of the skipped partner term.
    ours = jax.jit(jax.value_and_grad(lambda *x: zerovl.mixed_loss(loss_fn, *x)[0],
                                      argnums=(0, 1, 2, 3)))
    ref = jax.value_and_grad(lambda *x: _soft_reference(reference, *x), argnums=(0, 1, 2, 3))
    for alpha in (0.3, 0.97, 1.0):  # 1.0: an unmixed step (the partner term is skipped)
        x = (zimg, ztxt, t, b, jnp.float32(alpha))
        (v, grads), (v_ref, grads_ref) = ours(*x), ref(*x)
        np.testing.assert_allclose(v, v_ref, rtol=1e-5)
        for g, g_ref, what in zip(grads, grads_ref, ("zimg", "ztxt", "t", "b"), strict=True):
            if reference == "softmax" and what == "b":
                continue  # softmax ignores b
            np.testing.assert_allclose(g, g_ref, rtol=1e-4, atol=1e-6, err_msg=what)


def test_mixed_steps_on_eight_devices_equal_one_device():
    config = tiny_config(train={"mixup": {"enabled": True, "probability": 0.8}})
    validate(config)
    batches_ = synthetic_batches(6, config.train.batch_size)
    state1, hist1 = run_steps(config, jax.devices()[:1], batches_)
    state8, hist8 = run_steps(config, jax.devices()[:8], batches_)
    alphas = [float(m["train/mixup_alpha"]) for m in hist1]
    assert any(a < 1 for a in alphas), alphas  # some step really mixed
    np.testing.assert_allclose([m["train/loss"] for m in hist8],
                               [m["train/loss"] for m in hist1], rtol=1e-5)
    leaves8 = jax.tree.leaves(jax.device_get(state8.params))
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(jax.device_get(state1.params)),
                            leaves8, strict=True):
        name = jax.tree_util.keystr(path)
        if "['key']['bias']" in name:  # its exact gradient is 0 (see test_train_step.py)
            continue
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-6, err_msg=name)


def test_mixup_refuses_what_it_cannot_mix():
    for sections, key in [({"loss": {"positives": "labels"}}, "loss.positives"),
                          ({"train": {"microbatches": 2}}, "train.microbatches"),
                          ({"train": {"mixup": {"beta": 0.0}}}, "train.mixup.beta"),
                          ({"train": {"mixup": {"probability": 1.5}}}, "train.mixup.probability")]:
        config = tiny_config(**sections)
        config.train.mixup.enabled = True
        with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
            validate(config)


def test_a_run_with_both_resumes_exactly(corpus, tmp_path, monkeypatch):
    from contrastive_jax.checkpoints.store import restore_params
    from contrastive_jax.train import loop

    config = tiny_config(
        data={"sources": (tfrecords(corpus, weight=1.0), tfrecords(corpus, "b", weight=1.0)),
              "debiased_sampling": True, "channels": 1, "image_size": 28, "cycle_length": 2,
              "shuffle_buffer": 4, "tokenizer": {"vocab_size": 40}},
        train={"steps": 6, "batch_size": 8, "checkpoint_every": 2,
               "mixup": {"enabled": True}},
        optimizer={"warmup_steps": 1})
    validate(config)
    full, cut = str(tmp_path / "full"), str(tmp_path / "cut")
    loop.train(config, full)
    assert train_cut_and_resumed(config, cut, monkeypatch, 3)["step"] == 6

    def records(workdir):
        with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
            return {r["step"]: r for r in map(json.loads, f) if "train/loss" in r}

    a, b = records(full), records(cut)
    assert [a[s]["train/mixup_alpha"] for s in (4, 5, 6)] == [
        b[s]["train/mixup_alpha"] for s in (4, 5, 6)]
    assert a[6]["train/loss"] == b[6]["train/loss"]
    for x, y in zip(jax.tree.leaves(restore_params(full)[1]),
                    jax.tree.leaves(restore_params(cut)[1]), strict=True):
        np.testing.assert_array_equal(x, y)
