"""A non-finite loss: the step drops its update on device, `train.nonfinite=skip` counts
such steps and stops after `train.nonfinite_limit` in a row, `stop` stops at the first;
either way no checkpoint holds a NaN, and the checkpointer and metrics writer are closed."""

import itertools
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import synthetic_batches, tiny_config

from contrastive_jax import cli
from contrastive_jax.checkpoints.store import Checkpointer
from contrastive_jax.config import load_config, validate
from contrastive_jax.errors import ConfigError
from contrastive_jax.losses import loss_from_config
from contrastive_jax.models.state import ModelDef
from contrastive_jax.parallel.mesh import create_mesh, to_global
from contrastive_jax.train import loop
from contrastive_jax.train.init_state import create_train_state
from contrastive_jax.train.metrics import MetricsWriter
from contrastive_jax.train.nonfinite import NonFiniteError, NonfiniteGuard
from contrastive_jax.train.optimizer import create_optimizer
from contrastive_jax.train.step import NONFINITE, jit_train_step, make_train_step


def test_a_non_finite_step_keeps_the_state_and_flags_it():
    config = tiny_config()
    mesh = create_mesh(config.mesh, devices=jax.devices()[:2])
    tx, _ = create_optimizer(config.optimizer, config.train.steps)
    state, shardings = create_train_state(config, tx, mesh)
    step = jit_train_step(make_train_step(ModelDef(config.model), tx,
                                          loss_from_config(config, mesh)), shardings, mesh)
    good, bad = synthetic_batches(2, config.train.batch_size)
    bad["image"][0, 0, 0, 0] = np.inf
    state, metrics = step(state, to_global(good, mesh))
    assert int(metrics[NONFINITE]) == 0
    before = jax.device_get(state)
    state, metrics = step(state, to_global(bad, mesh))
    assert not np.isfinite(float(metrics["train/loss"])) and int(metrics[NONFINITE]) == 1
    after = jax.device_get(state)
    assert int(after.step) == int(before.step) + 1  # the batch is consumed
    for a, b in zip(jax.tree.leaves((before.params, before.opt_state)),
                    jax.tree.leaves((after.params, after.opt_state)), strict=True):
        np.testing.assert_array_equal(a, b)  # params and optimizer state untouched
    state, metrics = step(state, to_global(good, mesh))
    assert np.isfinite(float(metrics["train/loss"])) and int(metrics[NONFINITE]) == 0


def test_the_guard_reads_each_flag_one_step_late_and_counts_streaks():
    guard = NonfiniteGuard("skip", limit=2)
    flags = iter([0, 1, 0, 1])
    for step in range(1, 5):
        guard.push(step, jnp.int32(next(flags)))
    assert (guard.total, guard.streak) == (1, 0)  # step 4's flag is not read yet
    guard.flush()
    assert (guard.total, guard.streak) == (2, 1)
    guard.push(5, jnp.int32(1))
    with pytest.raises(NonFiniteError, match="2 steps in a row, up to step 5"):
        guard.flush()
    stop = NonfiniteGuard("stop", limit=10)
    stop.push(7, jnp.int32(1))
    with pytest.raises(NonFiniteError, match="not finite at step 7 .train.nonfinite=stop"):
        stop.push(8, jnp.int32(0))


def _config(data_dir, **train):
    return tiny_config(
        data={"data_dir": data_dir, "tokenizer": {"vocab_size": 64}, "shuffle_buffer": 64},
        train=train)  # no evals: only the steps and checkpoints matter here


def _poison(monkeypatch, steps):
    """Feeds an image of infs in the given (1-based) steps."""
    to_global, calls = loop.to_global, itertools.count(1)

    def poisoned(batch, mesh):
        if next(calls) in steps:
            batch = {**batch, "image": np.full_like(batch["image"], np.inf)}
        return to_global(batch, mesh)

    monkeypatch.setattr(loop, "to_global", poisoned)


def _newest_checkpoint(config, workdir):
    """(step, meta, params) of the newest checkpoint, restored as a resume would."""
    tx, _ = create_optimizer(config.optimizer, config.train.steps)
    state, shardings = create_train_state(config, tx, create_mesh(config.mesh))
    checkpointer = Checkpointer(workdir, config)
    try:
        state, meta = checkpointer.restore(state, shardings)
    finally:
        checkpointer.close()
    return int(state.step), meta, jax.device_get(state.params)


def _spy_closes(monkeypatch) -> list[str]:
    closed = []
    for cls in (Checkpointer, MetricsWriter):
        original = cls.close

        def close(self, _original=original, _name=cls.__name__):
            closed.append(_name)
            return _original(self)

        monkeypatch.setattr(cls, "close", close)
    return closed


def test_skip_counts_dropped_updates_and_stops_after_the_limit(fake_data_dir, tmp_path,
                                                               monkeypatch):
    workdir = str(tmp_path / "w")
    config = _config(fake_data_dir, steps=9, checkpoint_every=3, nonfinite="skip",
                     nonfinite_limit=3)
    _poison(monkeypatch, {2, 3, 5, 6, 7})
    closed = _spy_closes(monkeypatch)
    with pytest.raises(NonFiniteError, match="3 steps in a row, up to step 7 "
                                             r"\(train.nonfinite_limit=3\)"):
        loop.train(config, workdir)
    assert {"Checkpointer", "MetricsWriter"} <= set(closed)
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        records = {r["step"]: r for r in map(json.loads, f) if "train/loss" in r}
    assert [records[s]["train/nonfinite_steps"] for s in range(1, 7)] == [0, 1, 2, 2, 3, 4]
    assert records[2]["train/loss"] == "nan" and np.isfinite(records[4]["train/loss"])
    step, meta, params = _newest_checkpoint(config, workdir)
    assert step == 6 and meta["nonfinite_steps"] == 4  # saved with two dropped updates
    assert all(np.isfinite(p).all() for p in jax.tree.leaves(params))


def test_stop_is_one_line_naming_the_step_and_saves_nothing_after_it(
        fake_data_dir, tmp_path, monkeypatch, capsys):
    workdir = str(tmp_path / "w")
    # Step 3 is no log or save step: its flag is read after step 4 was dispatched, and
    # step 4 (a save step) is not saved.
    _poison(monkeypatch, {3})
    # The demo config through the command line, with tiny_config's model: what is tested is
    # the stop, its one line and the checkpoints, not the model's size.
    overrides = [f"data.data_dir={fake_data_dir}", "train.batch_size=16", "train.log_every=5",
                 "train.checkpoint_every=2", "train.progress_bar=False", "model.image.depth=1",
                 "model.image.width=32", "model.image.mlp_dim=64", "model.image.num_heads=2",
                 "model.text.depth=1", "model.text.width=32", "model.text.mlp_dim=64",
                 "model.text.vocab_size=64", "data.tokenizer.vocab_size=64",
                 "model.embed_dim=16", "data.shuffle_buffer=64", "evals.tasks=[]",
                 "optimizer.warmup_steps=1",
                 "train.nonfinite=stop"]
    code = cli.main(["train", "--config", "configs/demo_siglip.py:steps=6", "--workdir",
                     workdir, *[f"--config.{item}" for item in overrides]])
    err = capsys.readouterr().err
    assert code == 2
    assert [line for line in err.splitlines() if line.startswith("error:")] == [
        "error: train/loss or its gradient is not finite at step 3 (train.nonfinite=stop); "
        "no checkpoint holds that step or a later one"]
    assert "Traceback" not in err and "Event loop is closed" not in err
    config = load_config("configs/demo_siglip.py:steps=6", overrides)
    step, _, params = _newest_checkpoint(config, workdir)
    assert step == 2 and all(np.isfinite(p).all() for p in jax.tree.leaves(params))


def test_nonfinite_keys_are_checked():
    for key, value, match in (("nonfinite", "ignore", "'train.nonfinite' must be"),
                              ("nonfinite_limit", 0, "'train.nonfinite_limit' must be"),
                              ("resume_step", 0, "'train.resume_step' must be")):
        config = tiny_config()
        config.train[key] = value
        with pytest.raises(ConfigError, match=match):
            validate(config)
