"""Checkpoint integrity with 2 processes (jax.distributed on localhost): a job killed with
kill -9 in the middle of a save, whose newest finished checkpoint is then damaged, resumes
in both processes from the same older checkpoint; one process moves the damaged one aside
and nothing hangs."""

from __future__ import annotations

import json
import os
import signal
import time

from test_checkpoint_integrity import _flip_chunk_data
from test_elastic_resume import launch, wait

from contrastive_jax.data.text_encoder import ensure_tokenizer


def test_kill_9_in_a_save_and_a_damaged_newest_checkpoint(fake_data_dir, tmp_path):
    from elastic_worker import elastic_config

    workdir = tmp_path / "w"
    spec = {"data_dir": fake_data_dir, "steps": 8, "streams": 2, "checkpoint_every": 2,
            # 512 tokens: the text embedding's chunks lie in an OCDBT data file (see
            # test_checkpoint_integrity), where a flipped byte damages one array.
            "vocab": 512,
            "tokenizer": str(workdir / "tokenizer.model"), "workdir": str(workdir)}
    cfg = elastic_config({**spec, "tokenizer": None})
    cfg.data.tokenizer.vocab_size = 64
    os.makedirs(workdir)
    ensure_tokenizer(cfg.data, str(workdir))
    # Checkpoints 1, 2 and 4 are written; the commit of 6 hangs, and the job is killed there.
    procs = launch({**spec, "first": 1, "hang_in_commit": 6}, 2, tmp_path)
    marker, deadline = workdir / "committing", time.time() + 300
    while not marker.exists() and time.time() < deadline and all(
            p.poll() is None for p in procs):
        time.sleep(0.1)
    assert marker.exists(), [(tmp_path / f"log1-{i}.txt").read_text()[-2000:] for i in (0, 1)]
    for proc in procs:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    checkpoints = workdir / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir() if p.name.isdigit()) == ["1", "2", "4"]
    assert any(p.name.startswith("6.") for p in checkpoints.iterdir())  # half written
    # Damage checkpoint 4's params: a chunk that one process's shards may hold alone.
    _flip_chunk_data(str(workdir), 4, b"params.txt.embedding.embedding")

    wait(launch({**spec, "first": 3}, 2, tmp_path), tmp_path, 3)
    logs = [(tmp_path / f"log3-{i}.txt").read_text() for i in (0, 1)]
    for log in logs:  # both processes resumed from checkpoint 2 and trained to the end
        assert "resumed from step 2" in log, log[-3000:]
    moved = [line for log in logs for line in log.splitlines() if "moved to" in line]
    assert len(moved) == 1 and "checkpoint 4" in moved[0] and "is damaged" in moved[0], moved
    assert sorted(p.name for p in (checkpoints / "corrupt").iterdir()) == ["4"]
    saved = sorted(int(p.name) for p in checkpoints.iterdir() if p.name.isdigit())
    assert saved == [1, 2, 4, 6, 8], sorted(p.name for p in checkpoints.iterdir())
    for i in (0, 1):
        assert json.loads((workdir / f"result{i}.json").read_text()) == {"step": 8}
