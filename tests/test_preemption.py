"""Preemption and Ctrl-C: a real SIGTERM, then a real SIGINT, to real `contrastive-jax train`
processes, each followed by a relaunch, against one uninterrupted reference run.

One chain of processes proves both: the run is stopped by SIGTERM, its relaunch is stopped
by SIGINT (Ctrl-C), and the second relaunch finishes. The reference run trains alongside."""

import json
import os
import signal
import subprocess
import sys
import threading
import time

import jax
import numpy as np
import pytest
from helpers import fashion_tasks
from xla_flags import CHEAP_COMPILE

from contrastive_jax.checkpoints.store import Checkpointer
from contrastive_jax.config import load_config
from contrastive_jax.parallel.mesh import create_mesh
from contrastive_jax.train.init_state import create_train_state
from contrastive_jax.train.optimizer import create_optimizer

STEPS = 200
CONFIG = f"configs/demo_siglip.py:steps={STEPS}"


def _overrides(data_dir, cache_dir) -> list[str]:
    return [f"data.data_dir={data_dir}", "train.batch_size=16", "train.log_every=1",
            "train.checkpoint_every=1000", "train.progress_bar=False", "model.image.depth=1",
            "model.image.width=32", "model.image.mlp_dim=64", "model.image.num_heads=2",
            "model.text.width=32", "model.text.mlp_dim=64", "model.embed_dim=16",
            # The final zero-shot eval is compared; embedding stats would add only time.
            f"evals.tasks={fashion_tasks(stats=0)!r}",
            "optimizer.warmup_steps=1",
            # Shared by the four processes: the relaunches compile nothing anew.
            f"train.compilation_cache_dir={cache_dir}"]


def _cli(workdir, data_dir, cache_dir) -> list[str]:
    return [sys.executable, "-m", "contrastive_jax.cli", "train", "--config", CONFIG,
            "--workdir", str(workdir),
            *[f"--config.{item}" for item in _overrides(data_dir, cache_dir)]]


def _final_params(workdir, data_dir, cache_dir):
    """The last checkpoint's step, metadata and params, restored as the trainer would."""
    config = load_config(CONFIG, _overrides(data_dir, cache_dir))
    tx, _ = create_optimizer(config.optimizer, config.train.steps)
    state, shardings = create_train_state(config, tx, create_mesh(config.mesh))
    checkpointer = Checkpointer(str(workdir), config)
    state, meta = checkpointer.restore(state, shardings)
    checkpointer.close()
    return int(state.step), meta, jax.device_get(state.params)


def _records(workdir) -> list[dict]:
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def _logged_steps(path) -> int:
    try:
        with open(path) as f:
            return sum(1 for line in f if '"train/loss"' in line)
    except FileNotFoundError:
        return 0


def _saved_steps(workdir) -> list[int]:
    return sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())


SAVED = "checkpoint saved"


def _interrupt(proc, metrics, logged: int, signum: int) -> dict:
    """Sends `signum` once `metrics` holds `logged` train records, and SIGKILL one second
    after the process logs that its checkpoint is saved, if it still runs then: the
    checkpoint must be committed when the message prints. What the process left."""
    err_lines, saved_at = [], []

    def read_stderr():
        for line in proc.stderr:
            err_lines.append(line)
            if SAVED in line and not saved_at:
                saved_at.append(time.monotonic())

    reader = threading.Thread(target=read_stderr, daemon=True)
    reader.start()
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if _logged_steps(metrics) >= logged:
            break
        time.sleep(0.02)
    running = proc.poll() is None
    signalled = time.monotonic()
    if running:
        proc.send_signal(signum)
    while proc.poll() is None and not saved_at and time.monotonic() < signalled + 120:
        time.sleep(0.01)
    killed = False
    if not saved_at and proc.poll() is None:  # no message in 2 minutes: fails below
        proc.kill()
    if saved_at:
        time.sleep(max(0.0, saved_at[0] + 1.0 - time.monotonic()))
        killed = proc.poll() is None
        if killed:
            proc.kill()
    out = proc.stdout.read()
    proc.wait(timeout=120)
    exited = time.monotonic()
    reader.join(timeout=10)
    last = out.strip().splitlines()[-1] if out.strip() else "{}"
    return {"running_when_signalled": running, "returncode": proc.returncode, "out": out,
            "err": "".join(err_lines), "final": json.loads(last) if last.startswith("{") else {},
            "killed_after_saved": killed, "seconds_to_exit": exited - signalled}


@pytest.fixture(scope="module")
def runs(fake_data_dir, tmp_path_factory):
    """The reference run, and the run stopped by SIGTERM after >= 3 logged steps, relaunched,
    stopped by SIGINT >= 3 steps later, and relaunched to the end."""
    tmp_path = tmp_path_factory.mktemp("preemption")
    env = {**os.environ, "XLA_FLAGS": CHEAP_COMPILE, "JAX_PLATFORMS": "cpu"}
    cache = tmp_path / "xla_cache"
    full_dir, cut_dir = tmp_path / "full", tmp_path / "cut"
    metrics = cut_dir / "metrics.jsonl"

    def start(workdir):
        return subprocess.Popen(_cli(workdir, fake_data_dir, cache), env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    full = start(full_dir)
    # SIGTERM: what Kubernetes / SLURM send before killing a job.
    sigterm = _interrupt(start(cut_dir), metrics, 3, signal.SIGTERM)
    sigterm["saved"] = _saved_steps(cut_dir) if (cut_dir / "checkpoints").exists() else []
    sigterm["records"] = _records(cut_dir) if metrics.exists() else []
    stop = sigterm["final"].get("step", 0)
    # SIGINT: Ctrl-C on the command line, to the first relaunch.
    sigint = _interrupt(start(cut_dir), metrics, stop + 3, signal.SIGINT)
    sigint["saved"] = _saved_steps(cut_dir) if (cut_dir / "checkpoints").exists() else []
    resumed = subprocess.run(_cli(cut_dir, fake_data_dir, cache), env=env,
                             capture_output=True, text=True, timeout=240)
    out_full, err_full = full.communicate(timeout=240)
    return {"sigterm": sigterm, "sigint": sigint, "resumed": resumed,
            "full": (full.returncode, out_full, err_full), "full_dir": full_dir,
            "cut_dir": cut_dir, "cache": cache}


def _losses(workdir) -> dict[int, float]:
    return {r["step"]: r["train/loss"] for r in _records(workdir) if "train/loss" in r}


def test_ctrl_c_on_the_command_line_saves_and_resumes(runs):
    sigterm, sigint = runs["sigterm"], runs["sigint"]
    assert sigint["running_when_signalled"], "the relaunch ended before Ctrl-C"
    assert sigint["returncode"] == 130, sigint["err"][-2000:]
    assert '"interrupted_by": 2' in sigint["out"]
    stop = sigint["final"]["step"]
    # Saved where Ctrl-C stopped it, >= 3 steps past where the relaunch started.
    assert sigint["saved"][-1] == stop and sigterm["final"]["step"] + 3 <= stop < STEPS
    # Resuming continues from the saved step rather than from scratch.
    resumed = runs["resumed"]
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f'"step": {STEPS}' in resumed.stdout
    logged = [r["step"] for r in _records(runs["cut_dir"]) if "train/loss" in r]
    assert logged == list(range(1, STEPS + 1))
    assert min(s for s in _losses(runs["cut_dir"]) if s > stop) == stop + 1


def test_sigterm_to_training_process_saves_exits_0_and_resumes_identically(fake_data_dir,
                                                                           runs):
    sigterm, cache = runs["sigterm"], runs["cache"]
    full_dir, cut_dir = runs["full_dir"], runs["cut_dir"]
    assert sigterm["running_when_signalled"], "the run ended before it could be preempted"
    # A prompt exit: within a second of the committed save (the SIGKILL then found no
    # process), and well inside a preemption notice's ~30 s (7 to 22 s before the fix).
    assert not sigterm["killed_after_saved"] and sigterm["seconds_to_exit"] < 15
    assert sigterm["returncode"] == 0, sigterm["err"][-2000:]
    stopped = sigterm["final"]
    stop_step = stopped["step"]
    assert stopped["interrupted_by"] == signal.SIGTERM and 3 <= stop_step < STEPS
    assert max(sigterm["saved"]) == stop_step  # saved where it stopped, off the 1000 interval
    assert max(r["step"] for r in sigterm["records"]) == stop_step  # no eval ran

    resumed = runs["resumed"]
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    full_rc, out_full, err_full = runs["full"]
    assert full_rc == 0, err_full[-2000:]
    final_full = json.loads(out_full.strip().splitlines()[-1])
    final_resumed = json.loads(resumed.stdout.strip().splitlines()[-1])
    assert final_resumed["step"] == final_full["step"] == STEPS
    assert "zeroshot/fashion_mnist/top1" in final_full
    for key, value in final_full.items():
        np.testing.assert_allclose(final_resumed[key], value, rtol=1e-6, err_msg=key)
    # Bit for bit the same params, and as many examples seen, as without the preemption.
    step_a, meta_a, params_a = _final_params(full_dir, fake_data_dir, cache)
    step_b, meta_b, params_b = _final_params(cut_dir, fake_data_dir, cache)
    assert step_a == step_b == STEPS
    assert meta_a["examples_seen"] == meta_b["examples_seen"] == STEPS * 16
    # The stream stands where the uninterrupted one does: examples read (16 epochs of the
    # 200) and the TFDS source's position.
    assert meta_a["stream"] == meta_b["stream"]
    assert meta_b["stream"]["examples_read"] == STEPS * 16
    for a, b in zip(jax.tree.leaves(params_a), jax.tree.leaves(params_b), strict=True):
        np.testing.assert_array_equal(a, b)
    # The relaunches appended to the same metrics file: steps 1..stop, then stop+1..STEPS.
    logged = [r["step"] for r in _records(cut_dir) if "train/loss" in r]
    assert logged == list(range(1, STEPS + 1))

    # Step by step, the twice-interrupted-then-resumed run logged the uninterrupted run's
    # losses.
    ref, got = _losses(full_dir), _losses(cut_dir)
    assert sorted(got) == sorted(ref) == list(range(1, STEPS + 1))
    assert min(s for s in got if s > stop_step) == stop_step + 1
    np.testing.assert_allclose([got[s] for s in ref], list(ref.values()), rtol=1e-6)
