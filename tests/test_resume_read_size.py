"""Resuming with another `train.batch_size` or CiT `oversample` continues at the exact next
unread example; an old checkpoint that cannot say where refuses in one line. (Split from
test_resume.py so the two files run in parallel under pytest-xdist.)"""

import json
import os

import pytest
from helpers import tiny_config

from contrastive_jax.checkpoints.store import Checkpointer
from contrastive_jax.data.stream import train_dataset
from contrastive_jax.data.tokenizer_setup import ensure_tokenizer
from contrastive_jax.errors import CheckpointError
from contrastive_jax.train import loop
from contrastive_jax.train.stream_progress import examples_read_at


def quick_config(data_dir, steps, batch_size, **train):
    """A tiny run without evals: only its steps and its stream matter here."""
    return tiny_config(
        # One logical stream: its rows do not depend on the batch size (several streams'
        # chunks side by side do).
        data={"data_dir": data_dir, "tokenizer": {"vocab_size": 64}, "shuffle_buffer": 64,
              "logical_streams": 1},
        train={"steps": steps, "batch_size": batch_size, "checkpoint_every": 1000, **train},
        optimizer={"warmup_steps": 1})


def note_reads(monkeypatch) -> list[bytes]:
    """Notes the rows of every host batch the loop reads from its stream (before CiT picks
    from them); an image identifies its example (the fake images are random)."""
    read, to_global = [], loop.to_global

    def noting(batch, mesh):
        read.extend(row.tobytes() for row in batch["image"])
        return to_global(batch, mesh)

    monkeypatch.setattr(loop, "to_global", noting)
    return read


def uninterrupted(config, workdir, n) -> tuple[list[bytes], list[int]]:
    """The first `n` examples of the run's stream read in one go, and the stream position
    after them: what a run that never stopped has read."""
    tokenizer = ensure_tokenizer(config.data, workdir)
    batch = next(train_dataset(config.data, tokenizer, global_batch_size=n,
                               seed=config.seed).as_numpy_iterator())  # fmt: skip
    return [row.tobytes() for row in batch["image"]], batch["stream_position"].tolist()


def latest_meta(workdir) -> dict:
    checkpoints = os.path.join(workdir, "checkpoints")
    step = max(int(name) for name in os.listdir(checkpoints) if name.isdigit())
    with open(os.path.join(checkpoints, str(step), "meta", "metadata")) as f:
        return json.load(f)


@pytest.mark.parametrize("change", ["batch_size", "oversample"])
def test_resume_with_another_read_size_continues_at_the_next_unread_example(
        fake_data_dir, tmp_path, monkeypatch, change):
    """3 steps, then 2 more reading 24 examples a step: batch 8 -> 24 (24 read, then 48), or
    CiT oversample 2 -> 3 over a batch of 8 (48 read, then 48). The second run continues at
    the next unread example, not at step x new read size (72: which skips or repeats)."""
    workdir = str(tmp_path / "run")
    if change == "batch_size":
        first, second = quick_config(fake_data_dir, 3, 8), quick_config(fake_data_dir, 5, 24)
    else:
        cit = {"enabled": True, "refresh_every": 100}
        first = quick_config(fake_data_dir, 3, 8, cit={**cit, "oversample": 2})
        second = quick_config(fake_data_dir, 5, 8, cit={**cit, "oversample": 3})
    read = note_reads(monkeypatch)
    loop.train(first, workdir)
    first_read = len(read)
    assert first_read == (24 if change == "batch_size" else 48)
    loop.train(second, workdir)
    total = first_read + 2 * 24
    assert len(read) == total
    expected, position = uninterrupted(second, workdir, total)
    assert read == expected  # each example once, in stream order, across the change
    meta = latest_meta(workdir)
    assert meta["step"] == 5 and meta["stream"]["examples_read"] == total
    assert meta["stream"]["positions"] == [position]
    assert meta["examples_seen"] == (3 * 8 + 2 * 24 if change == "batch_size" else 5 * 8)


def test_a_checkpoint_without_a_stream_record_resumes_only_at_its_batch_size(
        fake_data_dir, tmp_path, monkeypatch):
    """A checkpoint written before the stream state was saved records only the step and the
    examples trained on: at its batch size the resume continues exactly (step x batch); at
    another it refuses in one line naming 'train.batch_size'."""
    workdir = str(tmp_path / "old")
    save = Checkpointer.save

    def old_style(self, state, **kwargs):  # what checkpoints were before meta["stream"]
        return save(self, state, **{**kwargs, "stream": None})

    monkeypatch.setattr(Checkpointer, "save", old_style)
    read = note_reads(monkeypatch)
    loop.train(quick_config(fake_data_dir, 2, 8), workdir)
    assert "stream" not in latest_meta(workdir)
    with pytest.raises(CheckpointError, match="'train.batch_size'") as refused:
        loop.train(quick_config(fake_data_dir, 3, 24), workdir)
    assert "\n" not in str(refused.value) and "train.batch_size=8" in str(refused.value)
    assert len(read) == 16  # refused before reading anything
    loop.train(quick_config(fake_data_dir, 3, 8), workdir)
    assert read == uninterrupted(quick_config(fake_data_dir, 3, 8), workdir, 24)[0]


def test_examples_read_at_each_kind_of_checkpoint():
    config = tiny_config(train={"batch_size": 8, "cit": {"enabled": True, "oversample": 3}})
    assert examples_read_at({"stream": {"examples_read": 100}, "examples_seen": 40}, 5,
                            config) == 100
    assert examples_read_at({"examples_seen": 40}, 5, config) == 5 * 8 * 3
    assert examples_read_at({}, 5, config) == 120  # older still: no examples_seen either
    with pytest.raises(CheckpointError, match="train.batch_size=16.*'train.batch_size'"):
        examples_read_at({"examples_seen": 80}, 5, config)
