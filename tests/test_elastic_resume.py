"""Elastic resume (data/order.py): a run trained by 2 processes (jax.distributed on
localhost, gloo), stopped, resumed on 1 process, stopped, resumed on 2 again, reads every
global batch of an uninterrupted 1-process run, row for row, and logs its losses."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
from elastic_worker import elastic_config, train_recording
from test_multiprocess import ROOT, TESTS, free_port
from xla_flags import CHEAP_COMPILE

from contrastive_jax.data.text_encoder import ensure_tokenizer

STOPS = (4, 8, 12)  # 2 processes to step 4, 1 process to 8, 2 processes to 12
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


def test_two_processes_resumed_on_one_then_on_two_read_one_process_batches(fake_data_dir,
                                                                          tmp_path):
    cut, full = tmp_path / "cut", tmp_path / "full"
    base = {"data_dir": fake_data_dir, "steps": STOPS[-1], "streams": STREAMS,
            "tokenizer": str(tmp_path / "tok" / "tokenizer.model")}
    cfg = elastic_config({**base, "tokenizer": None})
    cfg.data.tokenizer.vocab_size = 64
    os.makedirs(tmp_path / "tok")
    ensure_tokenizer(cfg.data, str(tmp_path / "tok"))  # one tokenizer for every run
    run = {**base, "workdir": str(cut), "ids": str(tmp_path / "cut_ids.jsonl")}
    procs = launch({**run, "first": 1, "stop_at": STOPS[0]}, 2, tmp_path)
    try:  # the uninterrupted 1-process reference trains while the 2 processes do
        reference = train_recording({**base, "workdir": str(full),
                                     "ids": str(tmp_path / "full_ids.jsonl")})
    except BaseException:
        for proc in procs:
            proc.kill()
        raise
    wait(procs, tmp_path, 1)
    stopped = train_recording({**run, "first": STOPS[0] + 1, "stop_at": STOPS[1]})
    assert stopped == {"step": STOPS[1], "interrupted_by": 15}
    wait(launch({**run, "first": STOPS[1] + 1}, 2, tmp_path), tmp_path, STOPS[1] + 1)

    assert reference["step"] == STOPS[-1]
    resumed, uninterrupted = lines(run["ids"]), lines(tmp_path / "full_ids.jsonl")
    assert [r["step"] for r in resumed] == list(range(1, STOPS[-1] + 1))
    assert resumed == uninterrupted  # every batch's example ids, in row order
    assert all(len(set(r["ids"])) == 16 for r in resumed)
    # The same batches, the same optimizer state restored: the same losses, up to the
    # order of the cross-device sums.
    got, want = losses(cut), losses(full)
    assert sorted(got) == sorted(want) == list(range(1, STOPS[-1] + 1))
    np.testing.assert_allclose([got[s] for s in want], list(want.values()), rtol=1e-4)
    meta = json.loads((cut / "checkpoints" / str(STOPS[-1]) / "meta" / "metadata").read_text())
    assert meta["stream"]["logical_streams"] == STREAMS
    assert len(meta["stream"]["positions"]) == STREAMS
