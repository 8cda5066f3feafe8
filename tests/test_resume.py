"""Resuming: a workdir of another model is refused; a resume past the first epoch starts at
the checkpoint's stream position without counting an epoch. (Another batch size or CiT
oversample: test_resume_read_size.py; SIGTERM and Ctrl-C to real processes, then resumed
bit-exact: test_preemption.py, one chain of processes for both.)"""

import json
import os
import signal

import jax
import numpy as np
import pytest
from helpers import sigterm_in_step, tiny_config

from contrastive_jax.checkpoints.store import CheckpointMismatchError, restore_params
from contrastive_jax.data import examples, positions
from contrastive_jax.train import loop


def demo_config(data_dir, **train):
    return tiny_config(
        data={"data_dir": data_dir, "tokenizer": {"vocab_size": 64}, "shuffle_buffer": 64},
        train={"steps": 8, "checkpoint_every": 3, **train},
        # No evals: only the steps, checkpoints and stream matter here.
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
        del meta["fingerprints"], meta["digest"]  # neither existed then
        with open(path, "w") as f:
            json.dump(meta, f)
    assert loop.train(demo_config(fake_data_dir, steps=4), workdir)["step"] == 4


def _last_loss(workdir) -> float:
    with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
        return [r for r in map(json.loads, f) if "train/loss" in r][-1]["train/loss"]


def test_resume_past_the_first_epoch_starts_at_the_saved_stream_position(
        fake_data_dir, tmp_path, monkeypatch):
    # 200 examples per epoch, 16 per step: step 15 is 40 examples into epoch 1.
    config = demo_config(fake_data_dir, steps=18, checkpoint_every=5)
    config.data.logical_streams = 1  # one stream: 200 examples per epoch (the default: 16)
    config.data.filters.basic.update(enabled=True, max_chars=1000)  # counting would decode
    # FLIP on, unmasked from step 17: the resumed run masks step 16 from the restored step
    # and switches as the unbroken one does.
    config.model.image.mask_ratio, config.train.unmask_from = 0.5, 16
    full, cut = str(tmp_path / "full"), str(tmp_path / "cut")
    loop.train(config, full)
    with open(os.path.join(full, "metrics.jsonl"), encoding="utf-8") as f:
        ratios = [r["train/mask_ratio"] for r in map(json.loads, f) if "train/mask_ratio" in r]
    assert ratios == [0.5] * 16 + [0.0] * 2
    to_global = loop.to_global
    monkeypatch.setattr(loop, "to_global", sigterm_in_step(to_global, 15))
    assert loop.train(config, cut) == {"step": 15, "interrupted_by": signal.SIGTERM}
    with open(os.path.join(cut, "checkpoints", "15", "meta", "metadata")) as f:
        meta = json.load(f)
    assert meta["stream"]["examples_read"] == 15 * 16
    assert [positions.decode(p) for p in meta["stream"]["positions"][0]] == [(1, 40)]

    def no_counting(*args, **kwargs):
        raise AssertionError("the resume counted an epoch")

    monkeypatch.setattr(loop, "to_global", to_global)
    monkeypatch.setattr(examples, "usable_per_epoch", no_counting)
    assert loop.train(config, cut)["step"] == 18
    assert _last_loss(cut) == _last_loss(full)
    for a, b in zip(jax.tree.leaves(restore_params(cut)[1]),
                    jax.tree.leaves(restore_params(full)[1]), strict=True):
        np.testing.assert_array_equal(a, b)
