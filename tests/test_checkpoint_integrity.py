"""Checkpoints that read back wrong: each saved array's fingerprint is checked on restore; a
damaged checkpoint is a one-line warning, moves to checkpoints/corrupt/ and the resume takes
the newest one that passes; `train.resume_step` picks one."""

import glob
import json
import logging
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorstore as ts
from helpers import tiny_config
from jax.sharding import NamedSharding, PartitionSpec

from contrastive_jax.checkpoints import fingerprint
from contrastive_jax.checkpoints.store import Checkpointer, CheckpointMismatchError
from contrastive_jax.errors import CheckpointError
from contrastive_jax.models.state import weights_state_shapes
from contrastive_jax.parallel.mesh import create_mesh
from contrastive_jax.train import loop
from contrastive_jax.train.init_state import create_train_state
from contrastive_jax.train.optimizer import create_optimizer


def test_fingerprints_ignore_sharding_and_see_one_flipped_bit():
    x = jnp.arange(64 * 32, dtype=jnp.float32).reshape(64, 32) / 7
    tree = {"x": x, "step": jnp.int32(5), "h": jnp.ones(3, jnp.bfloat16),
            "m": jnp.array([True, False])}
    saved = fingerprint.fingerprints(tree)
    mesh = jax.make_mesh((8,), ("data",))
    sharded = jax.device_put(x, NamedSharding(mesh, PartitionSpec("data")))
    assert fingerprint.fingerprints({**tree, "x": sharded}) == saved
    flipped = np.asarray(x).copy()
    flipped.view(np.uint32)[3, 4] ^= 1
    swapped = np.asarray(x)[[1, 0, *range(2, 64)]]
    for changed in (flipped, swapped):
        assert fingerprint.mismatches(saved, {**tree, "x": jnp.asarray(changed)}) == ["x"]


def test_fingerprints_are_those_earlier_versions_saved():
    """Checkpoints keep their fingerprints across versions: these values were computed by
    the two-pass hash the first checkpoints were written with."""
    tree = {"a": jnp.arange(12, dtype=jnp.float32).reshape(3, 4) / 7, "b": jnp.int32(3),
            "c": jnp.ones((2, 3, 2), jnp.bfloat16), "d": jnp.arange(3, dtype=jnp.uint8),
            "u": jnp.array([True, False])}
    assert fingerprint.fingerprints(tree) == {
        "a": "627a51f5eee21f1e:float32:3x4", "b": "e7c2db91225cd6f9:int32:",
        "c": "3f0ddfd75aae5b81:bfloat16:2x3x2", "d": "06ee268d8337cb6e:uint8:3",
        "u": "e001efbe13d9d46a:bool:2"}


def _config(data_dir, **train):
    return tiny_config(
        # 512 text tokens: the embedding's chunks are big enough to lie in an OCDBT data
        # file, outside the checksummed b-tree nodes that inline small values.
        model={"text": {"vocab_size": 512}},
        data={"data_dir": data_dir, "tokenizer": {"vocab_size": 64}, "shuffle_buffer": 64},
        train={"steps": 4, "checkpoint_every": 2, "log_every": 2, **train})


@pytest.fixture(scope="module")
def trained(fake_data_dir, tmp_path_factory) -> str:
    """A workdir with checkpoints 1, 2 and 4; tests change copies of it."""
    workdir = str(tmp_path_factory.mktemp("integrity") / "w")
    loop.train(_config(fake_data_dir), workdir)
    return workdir


@pytest.fixture
def workdir(trained, tmp_path) -> str:
    copy = str(tmp_path / "w")
    shutil.copytree(trained, copy)
    return copy


def _flip(path: str, offset: int) -> None:
    data = bytearray(open(path, "rb").read())
    data[offset] ^= 0x10
    with open(path, "wb") as f:
        f.write(data)


def _flip_chunk_data(workdir: str, step: int, array: bytes) -> None:
    """Flips one byte in the middle of the stored bytes of a chunk of `array` (its OCDBT
    key prefix)."""
    state = os.path.join(workdir, "checkpoints", str(step), "state") + "/"
    kv = ts.KvStore.open({"driver": "ocdbt", "base": "file://" + state}).result()
    chunks = [k for k in kv.list().result()
              if k.startswith(array + b"/") and not k.endswith(b".zarray")]
    assert chunks, f"no chunk of {array} in {kv.list().result()}"
    value = kv.read(chunks[0]).result().value
    assert value
    for path in glob.glob(state + "**/d/*", recursive=True):
        offset = open(path, "rb").read().find(value)
        if offset >= 0:
            return _flip(path, offset + len(value) // 2)
    raise AssertionError(f"{chunks[0]} lies in no data file (inlined?)")


def _fresh_state(config):
    tx, _ = create_optimizer(config.optimizer, config.train.steps)
    return create_train_state(config, tx, create_mesh(config.mesh))


def _restore(config, workdir):
    checkpointer = Checkpointer(workdir, config)
    try:
        return checkpointer.restore(*_fresh_state(config))
    finally:
        checkpointer.close()


def _warnings(caplog) -> list[str]:
    # Ours only: orbax's "Waiting for previous save to complete took ... s" warning (absl)
    # comes whenever a save waits, which depends on the machine's load.
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING
            and r.name.startswith("contrastive_jax") and "checkpoint" in r.getMessage()]


def _set_aside(workdir, kind="corrupt") -> list[str]:
    return sorted(os.listdir(os.path.join(workdir, "checkpoints", kind)))


def test_a_flipped_byte_in_array_data_is_caught_and_the_resume_goes_back(
        fake_data_dir, workdir, caplog, capfd):
    config = _config(fake_data_dir, steps=5)
    # The chunk decodes without complaint: only its fingerprint tells.
    _flip_chunk_data(workdir, 4, b"params.txt.embedding.embedding")
    damaged = ("checkpoint 4 in {} is damaged (leaf params/txt/embedding/embedding: its "
               "values differ from the fingerprint saved with it)").format(
                   os.path.join(workdir, "checkpoints"))
    # A weights restore (eval, export) checks too, and moves nothing.
    shapes, shardings = weights_state_shapes(config, create_mesh(config.mesh))
    checkpointer = Checkpointer(workdir, config)
    try:
        with pytest.raises(CheckpointError) as error:
            checkpointer.restore_weights(shapes, shardings, step=4)
        assert str(error.value) == damaged
        with caplog.at_level(logging.WARNING):
            weights, _ = checkpointer.restore_weights(shapes, shardings)
        assert int(weights.step) == 2
        assert _warnings(caplog) == [f"{damaged}; trying the one before it"]
    finally:
        checkpointer.close()
    caplog.clear()
    # Training moves it aside, resumes from step 2 and saves again from there.
    with caplog.at_level(logging.WARNING):
        assert loop.train(config, workdir)["step"] == 5
    corrupt = os.path.join(workdir, "checkpoints", "corrupt", "4")
    assert _warnings(caplog) == [f"{damaged}; moved to {corrupt}"]
    assert os.path.isdir(corrupt) and _set_aside(workdir) == ["4"]
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        steps = [r["step"] for r in map(json.loads, f) if "train/loss" in r]
    assert steps == [2, 4, 4, 5]  # the first run logged 2 and 4; the resume from 2: 4, 5
    assert "Event loop is closed" not in capfd.readouterr().err


@pytest.mark.parametrize("name, offset", [("state/manifest.ocdbt", 60),
                                          ("meta/metadata", 100), ("meta/metadata", -20)])
def test_a_flipped_byte_in_metadata_is_one_warning_naming_the_file(
        fake_data_dir, workdir, caplog, capfd, name, offset):
    config = _config(fake_data_dir)
    path = os.path.join(workdir, "checkpoints", "4", name)
    _flip(path, offset % os.path.getsize(path))
    with caplog.at_level(logging.WARNING):
        state, meta = _restore(config, workdir)
    assert int(state.step) == meta["step"] == 2
    [warning] = _warnings(caplog)
    assert warning.startswith(f"checkpoint 4 in {os.path.join(workdir, 'checkpoints')} is "
                              f"damaged ({name}: ")
    assert "\n" not in warning and _set_aside(workdir) == ["4"]
    err = capfd.readouterr().err
    assert "Event loop is closed" not in err and "Traceback" not in err


def test_when_no_checkpoint_reads_back_the_error_is_one_line(fake_data_dir, workdir):
    config = _config(fake_data_dir)
    for step in (1, 2, 4):
        _flip(os.path.join(workdir, "checkpoints", str(step), "state", "manifest.ocdbt"), 60)
    with pytest.raises(CheckpointError, match="^no checkpoint in .* reads back intact; all "
                                              "were moved to corrupt/$"):
        _restore(config, workdir)
    assert _set_aside(workdir) == ["1", "2", "4"]


def test_checkpoints_without_fingerprints_still_restore(fake_data_dir, workdir):
    config = _config(fake_data_dir)
    for path in glob.glob(os.path.join(workdir, "checkpoints", "*", "meta", "metadata")):
        with open(path) as f:
            meta = json.load(f)
        del meta["fingerprints"], meta["digest"]  # as written before either existed
        with open(path, "w") as f:
            json.dump(meta, f)
    state, meta = _restore(config, workdir)
    assert int(state.step) == 4 and "fingerprints" not in meta


def test_resume_step_goes_back_once_and_a_missing_one_lists_the_steps(fake_data_dir,
                                                                      workdir):
    config = _config(fake_data_dir, steps=5, resume_step=2)
    assert loop.train(config, workdir)["step"] == 5
    assert _set_aside(workdir, "superseded") == ["4"]  # the old branch, kept
    # The same command again continues the new branch instead of going back again.
    config.train.steps = 6
    assert loop.train(config, workdir)["step"] == 6
    assert _set_aside(workdir, "superseded") == ["4"]
    config.train.resume_step = 3
    with pytest.raises(CheckpointError, match=r"^config key 'train.resume_step': no checkpoint "
                                              r"for step 3 in .* \(have \[4, 5, 6\]\)$"):
        loop.train(config, workdir)


def test_another_optimizer_is_a_mismatch_not_damage(fake_data_dir, workdir):
    config = _config(fake_data_dir)
    config.optimizer.grad_clip_norm = 0.0  # one transformation fewer in the optimizer state
    with pytest.raises(CheckpointMismatchError, match="^checkpoint 4 in .* does not fit this "
                                                      "run's state: .*opt_state/.* and the "
                                                      "other does not; use a new --workdir$"):
        _restore(config, workdir)
    assert not os.path.exists(os.path.join(workdir, "checkpoints", "corrupt"))
