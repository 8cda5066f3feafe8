"""Elastic resume (data/order.py) and checkpoint integrity with several processes
(jax.distributed on localhost, gloo): a run trained by 2 processes, stopped, resumed on 1
process, stopped, resumed on 2 again, killed with kill -9 in a save and resumed past a
damaged checkpoint reads every global batch of an uninterrupted 1-process run, row for row,
and logs its losses; both processes agree on the checkpoint to resume from, one moves the
damaged one aside, and nothing hangs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from elastic_worker import elastic_config, train_recording
from test_checkpoint_integrity import _flip_chunk_data
from test_multiprocess import ROOT, TESTS, free_port
from xla_flags import CHEAP_COMPILE

from contrastive_jax.data.tokenizer_setup import ensure_tokenizer
from contrastive_jax.errors import ConfigError

STEPS = 12
STREAMS = 2


def launch(spec: dict, processes: int, log_dir) -> list[subprocess.Popen]:
    """`processes` workers of one distributed job, 4 CPU devices each."""
    env = {**os.environ, "JAX_PLATFORMS": "cpu",
           "XLA_FLAGS": "--xla_force_host_platform_device_count=4 " + CHEAP_COMPILE,
           "PYTHONPATH": os.pathsep.join([ROOT, TESTS])}
    spec = {**spec, "port": free_port(), "processes": processes}
    procs = []
    for i in range(processes):
        with open(log_dir / f"log{spec['first']}-{i}.txt", "w") as log:
            procs.append(subprocess.Popen(
                [sys.executable, os.path.join(TESTS, "elastic_worker.py"),
                 json.dumps({**spec, "process_id": i})],
                env=env, stdout=log, stderr=subprocess.STDOUT))
    return procs


def wait(procs: list[subprocess.Popen], log_dir, first: int) -> None:
    try:
        for i, proc in enumerate(procs):
            proc.wait(timeout=300)
            log = (log_dir / f"log{first}-{i}.txt").read_text()
            assert proc.returncode == 0, log[-3000:]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()


def lines(path) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f]


def losses(workdir) -> dict[int, float]:
    return {r["step"]: r["train/loss"] for r in lines(os.path.join(workdir, "metrics.jsonl"))
            if "train/loss" in r}


def test_two_processes_resume_on_one_then_on_two_after_a_kill_9_and_a_damaged_checkpoint(
        fake_data_dir, tmp_path):
    """2 processes train to step 4 and stop; 1 process resumes to 8 and stops; 2 processes
    resume, save 10 and are killed with kill -9 while committing 12; checkpoint 10 is then
    damaged; 2 processes resume again, both from 8, and finish. Every step's batch, each
    time it was read, is the uninterrupted 1-process run's."""
    cut, full = tmp_path / "cut", tmp_path / "full"
    base = {"data_dir": fake_data_dir, "steps": STEPS, "streams": STREAMS,
            # 512 tokens: the text embedding's chunks lie in an OCDBT data file (see
            # test_checkpoint_integrity), where one flipped byte damages one array.
            "vocab": 512, "tokenizer": str(tmp_path / "tok" / "tokenizer.model")}
    cfg = elastic_config({**base, "tokenizer": None})
    cfg.data.tokenizer.vocab_size = 64
    os.makedirs(tmp_path / "tok")
    ensure_tokenizer(cfg.data, str(tmp_path / "tok"))  # one tokenizer for every run
    run = {**base, "workdir": str(cut), "ids": str(tmp_path / "cut_ids.jsonl")}
    procs = launch({**run, "first": 1, "stop_at": 4}, 2, tmp_path)
    try:  # the uninterrupted 1-process reference trains while the 2 processes do
        reference = train_recording({**base, "workdir": str(full),
                                     "ids": str(tmp_path / "full_ids.jsonl")})
    except BaseException:
        for proc in procs:
            proc.kill()
        raise
    wait(procs, tmp_path, 1)
    assert train_recording({**run, "first": 5, "stop_at": 8}) == {"step": 8,
                                                                  "interrupted_by": 15}
    checkpoints = cut / "checkpoints"
    kill_9_in_commit(launch({**run, "first": 9, "checkpoint_every": 2, "hang_in_commit": 12},
                            2, tmp_path), cut / "committing", tmp_path)
    assert steps_in(checkpoints) == [1, 4, 8, 10]
    assert any(p.name.startswith("12.") for p in checkpoints.iterdir())  # never committed
    # Damage checkpoint 10's params: a chunk that one process's shards may hold alone.
    _flip_chunk_data(str(cut), 10, b"params.txt.embedding.embedding")
    wait(launch({**run, "first": 9}, 2, tmp_path), tmp_path, 9)

    logs = [(tmp_path / f"log9-{i}.txt").read_text() for i in (0, 1)]
    for log in logs:  # both processes resumed from checkpoint 8
        assert "resumed from step 8" in log, log[-3000:]
    moved = [line for log in logs for line in log.splitlines() if "moved to" in line]
    assert len(moved) == 1 and "checkpoint 10" in moved[0] and "is damaged" in moved[0], moved
    assert sorted(p.name for p in (checkpoints / "corrupt").iterdir()) == ["10"]
    assert steps_in(checkpoints) == [1, 4, 8, 12]
    # orbax names a save's temporary directory by its step: saving 12 again removed it.
    assert not [p.name for p in checkpoints.iterdir() if p.name.startswith("12.")]
    assert reference["step"] == STEPS
    assert [json.loads((cut / f"result{i}.json").read_text()) for i in (0, 1)] == [
        {"step": STEPS}] * 2

    uninterrupted = {r["step"]: r["ids"] for r in lines(tmp_path / "full_ids.jsonl")}
    assert sorted(uninterrupted) == list(range(1, STEPS + 1))
    assert all(len(set(ids)) == 16 for ids in uninterrupted.values())
    resumed = lines(run["ids"])  # steps 9.. twice: before the kill and after it
    assert {r["step"] for r in resumed} == set(uninterrupted) and len(resumed) > STEPS
    for r in resumed:
        assert r["ids"] == uninterrupted[r["step"]], r["step"]  # row for row
    # The same batches, the same optimizer state restored: the same losses, up to the
    # order of the cross-device sums.
    got, want = losses(cut), losses(full)
    assert sorted(got) == sorted(want) == list(range(1, STEPS + 1))
    np.testing.assert_allclose([got[s] for s in want], list(want.values()), rtol=1e-4)
    meta = json.loads((checkpoints / str(STEPS) / "meta" / "metadata").read_text())
    assert meta["stream"]["logical_streams"] == STREAMS
    assert len(meta["stream"]["positions"]) == STREAMS
    # Another order than the checkpoint's is refused in one line, before any compile.
    with pytest.raises(ConfigError, match=f"^checkpoint {STEPS} orders its data in 2 logical "
                                          "streams; resume it with 'data.logical_streams=2'"):
        train_recording({**run, "first": STEPS + 1, "streams": 1, "steps": STEPS + 2})


def kill_9_in_commit(procs: list[subprocess.Popen], marker, log_dir) -> None:
    """Waits for a worker to hang in a checkpoint's commit (it writes `marker`), then kills
    every process of the job with SIGKILL."""
    deadline = time.time() + 300
    while not marker.exists() and time.time() < deadline and all(
            p.poll() is None for p in procs):
        time.sleep(0.1)
    for proc in procs:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    logs = sorted(log_dir.glob("log9-*.txt"))
    assert marker.exists(), [log.read_text()[-2000:] for log in logs]
    marker.unlink()


def steps_in(checkpoints) -> list[int]:
    return sorted(int(p.name) for p in checkpoints.iterdir() if p.name.isdigit())
