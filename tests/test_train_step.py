"""The train step on a mesh of 8 simulated devices matches the same step on 1 device."""

import jax
import numpy as np
import pytest
from helpers import synthetic_batches, tiny_config

from contrastive_jax.models.state import ModelDef
from contrastive_jax.parallel.mesh import create_mesh, to_global
from contrastive_jax.train.init_state import create_train_state
from contrastive_jax.train.optimizer import create_optimizer
from contrastive_jax.train.step import train_step_from_config


def run_steps(config, devices, batches, masked=True):
    mesh = create_mesh(config.mesh, devices=devices)
    tx, _ = create_optimizer(config.optimizer, config.train.steps)
    state, shardings = create_train_state(config, tx, mesh)
    step = train_step_from_config(config, mesh, tx, shardings, masked=masked)
    history = []
    for batch in batches:
        state, metrics = step(state, to_global(batch, mesh))
        history.append(jax.device_get(metrics))
    return state, history


def assert_eight_devices_match_one(config, batches) -> list[dict]:
    """Runs `batches` on 1 and on 8 devices: equal losses (rtol 1e-5) and params; returns
    the 1-device metrics. Attention key biases are skipped: their exact gradient is 0, so
    Adam steps on rounding noise."""
    state1, hist1 = run_steps(config, jax.devices()[:1], batches)
    state8, hist8 = run_steps(config, jax.devices()[:8], batches)
    loss1 = [m["train/loss"] for m in hist1]
    np.testing.assert_allclose([m["train/loss"] for m in hist8], loss1, rtol=1e-5)
    leaves1 = jax.tree_util.tree_leaves_with_path(jax.device_get(state1.params))
    for (path, a), b in zip(leaves1, jax.tree.leaves(jax.device_get(state8.params)),
                            strict=True):
        name = jax.tree_util.keystr(path)
        if "['key']['bias']" not in name:
            np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-5, err_msg=name)
    return hist1


@pytest.mark.parametrize("loss", ["sigmoid_chunked", "softmax_sharded"])
def test_eight_devices_match_one_device(loss):
    config = tiny_config(loss={"name": loss})
    batches = synthetic_batches(10, config.train.batch_size)
    state1, hist1 = run_steps(config, jax.devices()[:1], batches)
    state8, hist8 = run_steps(config, jax.devices()[:8], batches)
    losses1 = np.array([m["train/loss"] for m in hist1])
    losses8 = np.array([m["train/loss"] for m in hist8])
    np.testing.assert_allclose(losses8, losses1, rtol=1e-5)
    assert losses1[-1] < losses1[0]  # it trains
    for key in ("train/t", "train/b", "train/pos_logit", "train/neg_logit"):
        np.testing.assert_allclose([m[key] for m in hist8], [m[key] for m in hist1],
                                   rtol=1e-5, atol=1e-6)
    leaves1 = jax.tree_util.tree_leaves_with_path(jax.device_get(state1.params))
    leaves8 = jax.tree.leaves(jax.device_get(state8.params))
    for (path, a), b in zip(leaves1, leaves8, strict=True):
        name = jax.tree_util.keystr(path)
        if "['key']['bias']" in name:
            # Softmax attention is invariant to the key bias, so its exact gradient is 0 and
            # Adam normalises pure rounding noise into lr-sized steps: nothing to compare.
            continue
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-6, err_msg=name)
    # The batch really was split: each device held 2 of the 16 examples.
    mesh = create_mesh(config.mesh, devices=jax.devices()[:8])
    batch = to_global(batches[0], mesh)
    assert {s.data.shape[0] for s in batch["image"].addressable_shards} == {2}


def test_reference_and_sharded_losses_train_alike():
    """The full-matrix reference and the ring give the same run on one mesh."""
    batches = synthetic_batches(3, 16, seed=1)
    _, ref = run_steps(tiny_config(loss={"name": "sigmoid"}), jax.devices()[:4], batches)
    _, ring = run_steps(tiny_config(loss={"name": "sigmoid_chunked", "bidirectional": True}),
                        jax.devices()[:4], batches)
    np.testing.assert_allclose([m["train/loss"] for m in ring], [m["train/loss"] for m in ref],
                               rtol=1e-5)


def test_bench_times_the_loops_step(fake_data_dir, tmp_path):
    """`bench step` and the loop build one step (train_step_from_config): with label
    positives, the bench step's loss on a batch equals the loop's; without them it differs,
    so a bench that dropped them (as it once did) fails here."""
    from contrastive_jax.bench.train_step import step_setup
    from contrastive_jax.train import loop

    data = {"data_dir": fake_data_dir, "tokenizer": {"vocab_size": 64}}
    config = tiny_config(loss={"positives": "labels"}, data=data)
    run = loop.setup(config, str(tmp_path))
    run.checkpointer.close()
    batch = synthetic_batches(1, config.train.batch_size)[0]
    assert len(set(batch["label"])) < len(batch["label"])  # shared labels: positives differ
    _, loop_metrics = run.step_fn(run.state, to_global(batch, run.mesh))
    results = {}
    for positives in ("labels", "pairs"):
        config.loss.positives = positives
        mesh, _, state, _, bench_step, _ = step_setup(config, steps=1)
        _, metrics = bench_step(state, to_global(batch, mesh))
        results[positives] = float(metrics["train/loss"])
    want = float(loop_metrics["train/loss"])
    np.testing.assert_allclose(results["labels"], want, rtol=1e-6)
    assert abs(results["pairs"] - want) > 1e-2 * abs(want)


def test_weight_decay_skips_scalars_norms_and_biases():
    from contrastive_jax.train.optimizer import decay_mask

    config = tiny_config()
    params, _ = ModelDef.init(config.model, jax.random.key(0))
    mask = decay_mask(params)
    flat = {"/".join(str(getattr(k, "key", k)) for k in path): v
            for path, v in jax.tree_util.tree_leaves_with_path(mask)}
    assert not flat["t_log"] and not flat["b"]
    assert any(v for v in flat.values())
    assert all(v == k.endswith("kernel") for k, v in flat.items())
    assert flat["img/encoder/blocks/0/mlp/fc1/kernel"]


def test_grad_norm_per_part_adds_up_to_the_clipped_norm():
    """`train/grad_norm/<part>` for each trained top-level part (a locked tower has none):
    their root sum of squares is the global norm that the clip reads."""
    batches = synthetic_batches(1, 16, seed=2)
    _, (metrics,) = run_steps(tiny_config(), jax.devices()[:1], batches)
    parts = {k.split("/")[-1]: v for k, v in metrics.items() if k.startswith("train/grad_norm/")}
    assert {"img", "txt", "t_log", "b"} <= set(parts)
    np.testing.assert_allclose(np.sqrt(sum(v**2 for v in parts.values())),
                               metrics["train/grad_norm"], rtol=1e-5)
    _, (locked,) = run_steps(tiny_config(train={"locked": {"image": True}}), jax.devices()[:1],
                             batches)
    locked_parts = {k.split("/")[-1] for k in locked if k.startswith("train/grad_norm/")}
    assert "img" not in locked_parts and "txt" in locked_parts
