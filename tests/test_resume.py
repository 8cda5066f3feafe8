"""Resuming: a workdir of another model is refused; Ctrl-C on the command line saves and
resumes. (SIGTERM mid-run and the bit-exact resume: test_preemption.py.)"""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from helpers import tiny_config

from contrastive_jax.train import loop
from contrastive_jax.train.checkpoint import CheckpointMismatchError


def demo_config(data_dir, **train):
    return tiny_config(
        data={"data_dir": data_dir, "tokenizer": {"vocab_size": 64}, "shuffle_buffer": 64},
        train={"steps": 8, "checkpoint_every": 3, **train},
        evals={"zeroshot": {"batch_size": 16}, "embedding_stats": {"num_examples": 32}},
    )


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
