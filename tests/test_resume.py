"""Interrupted runs save on a signal and resume to exactly the uninterrupted result."""

import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from helpers import tiny_config

from contrastive_jax.parallel.mesh import create_mesh
from contrastive_jax.train import loop
from contrastive_jax.train.checkpoint import Checkpointer, CheckpointMismatchError
from contrastive_jax.train.optimizer import create_optimizer
from contrastive_jax.train.state import create_train_state


def demo_config(data_dir, **train):
    return tiny_config(
        data={"data_dir": data_dir, "tokenizer": {"vocab_size": 64}, "shuffle_buffer": 64},
        train={"steps": 8, "checkpoint_every": 3, **train},
        evals={"zeroshot": {"batch_size": 16}, "embedding_stats": {"num_examples": 32}},
    )


def final_params(config, workdir):
    mesh = create_mesh(config.mesh)
    tx, _ = create_optimizer(config.optimizer, config.train.steps)
    state, shardings = create_train_state(config, tx, mesh)
    checkpointer = Checkpointer(workdir, config)
    state, meta = checkpointer.restore(state, shardings)
    checkpointer.close()
    return int(state.step), meta, jax.device_get(state.params)


def test_sigterm_mid_run_then_resume_matches_uninterrupted(fake_data_dir, tmp_path, monkeypatch):
    config = demo_config(fake_data_dir)
    full = loop.train(config, str(tmp_path / "full"))
    assert full["step"] == 8 and "zeroshot/fashion_mnist/top1" in full

    # Deliver a real SIGTERM to this process right after step 4 is logged.
    write = loop.MetricsWriter.write

    def write_then_signal(self, step, metrics):
        write(self, step, metrics)
        if step == 4 and "train/loss" in metrics:
            signal.raise_signal(signal.SIGTERM)

    monkeypatch.setattr(loop.MetricsWriter, "write", write_then_signal)
    workdir = str(tmp_path / "interrupted")
    stopped = loop.train(config, workdir)
    assert stopped == {"step": 4, "interrupted_by": signal.SIGTERM}
    assert Checkpointer(workdir, config).latest_step() == 4  # saved off the interval (3, 6)
    monkeypatch.setattr(loop.MetricsWriter, "write", write)

    resumed = loop.train(config, workdir)
    assert resumed["step"] == 8
    step_a, meta_a, params_a = final_params(config, str(tmp_path / "full"))
    step_b, meta_b, params_b = final_params(config, workdir)
    assert step_a == step_b == 8
    assert meta_a["examples_seen"] == meta_b["examples_seen"] == 8 * 16
    for a, b in zip(jax.tree.leaves(params_a), jax.tree.leaves(params_b), strict=True):
        np.testing.assert_array_equal(a, b)
    # The resumed run appended to the same metrics file: steps 1-4 then 5-8.
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        steps = [int(line.split('"step": ')[1].split(",")[0]) for line in f]
    assert [s for s in steps if s <= 8][:8] == list(range(1, 9))


def test_workdir_of_another_model_is_refused(fake_data_dir, tmp_path):
    workdir = str(tmp_path / "w")
    loop.train(demo_config(fake_data_dir, steps=3), workdir)
    other = demo_config(fake_data_dir, steps=3)
    other.model.embed_dim = 24
    with pytest.raises(CheckpointMismatchError, match="different model.*model.embed_dim"):
        loop.train(other, workdir)
    # A checkpoint from before a model option existed lacks it in its metadata: it was made
    # with the option's default, so it must still resume.
    checkpoints = os.path.join(workdir, "checkpoints")
    meta_files = [os.path.join(d, f) for d, _, files in os.walk(checkpoints)
                  for f in files if os.path.basename(d) == "meta" and f == "metadata"]
    assert meta_files
    for path in meta_files:
        with open(path) as f:
            meta = json.load(f)
        del meta["model"]["scan_layers"], meta["model"]["text"]["causal"]
        with open(path, "w") as f:
            json.dump(meta, f)
    assert loop.train(demo_config(fake_data_dir, steps=4), workdir)["step"] == 4


def test_ctrl_c_on_the_command_line_saves_and_resumes(fake_data_dir, tmp_path):
    workdir = tmp_path / "cli"
    args = [sys.executable, "-m", "contrastive_jax.cli", "train", "--config",
            "configs/demo_siglip.py:steps=400", "--workdir", str(workdir),
            f"--config.data.data_dir={fake_data_dir}", "--config.train.batch_size=16",
            "--config.train.log_every=1", "--config.train.checkpoint_every=1000",
            "--config.train.progress_bar=False", "--config.model.image.depth=1",
            "--config.model.text.depth=1", "--config.evals.zeroshot.batch_size=16",
            "--config.evals.embedding_stats.num_examples=32", "--config.optimizer.warmup_steps=1"]
    env = {**os.environ, "XLA_FLAGS": "", "JAX_PLATFORMS": "cpu"}
    proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    metrics = workdir / "metrics.jsonl"
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if metrics.exists() and metrics.read_text().count("\n") >= 3:
            break
        time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    assert '"interrupted_by": 2' in out
    saved = sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
    assert saved and 3 <= saved[-1] < 400
    # Resuming continues from the saved step rather than from scratch.
    resume = subprocess.run(args + ["--config.train.steps=" + str(saved[-1] + 2)], env=env,
                            capture_output=True, text=True, timeout=300)
    assert resume.returncode == 0, resume.stderr[-2000:]
    assert f'"step": {saved[-1] + 2}' in resume.stdout
