"""A run with everything on gs:// against a real GCS API on loopback (fake-gcs-server):
the data (TFRecord shards from `data build` and wds tars), the workdir (config, tokenizer,
metrics, TensorBoard, orbax checkpoints), a preemption and resume, the model read back for
eval and export, and the export read back. The resumed gs:// run equals an uninterrupted
local run over the same bytes at every logged step.

The whole done-means run (200 + 200 steps of the demo, SIGKILL, `eval --model gs://`,
`export --format hf --out gs://`, through the CLI) is tests/gcs_done_means.py; it takes
minutes, so it is run by hand (docs/multihost.md).
"""

import io
import json
import os

import jax
import numpy as np
import pytest
from gcs_corpus import image, write_corpus
from helpers import tiny_config, train_cut_and_resumed

from contrastive_jax import paths
from contrastive_jax.data.sources import create_source, parse_sources
from contrastive_jax.errors import InputNotFoundError
from contrastive_jax.evaluate.embed_files import embed_images_of, embed_texts_of
from contrastive_jax.export import export_checkpoint
from contrastive_jax.export.flat import flatten
from contrastive_jax.export.model_spec import load_model
from contrastive_jax.train import loop


def run_config(sources: dict[str, str]):
    return tiny_config(
        data={"sources": ({"kind": "tfrecord", "pattern": sources["tfrecord"]},
                          {"kind": "webdataset", "pattern": sources["wds"]}),
              "channels": 1, "tokenizer": {"vocab_size": 64}, "shuffle_buffer": 16},
        train={"steps": 6, "checkpoint_every": 3},
    )


def _losses(workdir: str) -> dict[int, float]:
    rows = [json.loads(line) for line in paths.read_text(
        paths.join(workdir, "metrics.jsonl")).splitlines()]
    # A resumed run logs its steps again from the checkpoint on: the last value counts.
    return {r["step"]: r["train/loss"] for r in rows if "train/loss" in r}


def test_train_resume_eval_export_on_gcs(gcs, tmp_path, monkeypatch):
    root = "gs://cj-test/run-test"
    gcs_sources = write_corpus(root, str(tmp_path / "staging-gcs"))
    local_sources = write_corpus(str(tmp_path / "local"), str(tmp_path / "staging-local"))
    assert len(paths.glob(gcs_sources["tfrecord"])) == 4
    assert json.loads(paths.read_text(paths.join(root, "tfr", "data.manifest.json")))[
        "shards"]["data-00003-of-00004.tfrecord"]["examples"] == 8

    reference = str(tmp_path / "reference")
    loop.train(run_config(local_sources), reference)

    work = tmp_path / "cwd"  # nothing of the gs:// run may land in the working directory
    work.mkdir()
    monkeypatch.chdir(work)
    workdir = paths.join(root, "workdir")
    assert train_cut_and_resumed(run_config(gcs_sources), workdir, monkeypatch, 4)["step"] == 6
    assert os.listdir(work) == []

    assert _losses(workdir) == _losses(reference)  # bit-equal, steps 1..6
    listing = paths.listdir(workdir)
    for name in ("config.json", "tokenizer.model", "metrics.jsonl", "checkpoints",
                 "tensorboard"):
        assert name in listing
    assert paths.listdir(paths.join(workdir, "tensorboard"))  # event files uploaded
    assert {"3", "6"} <= set(paths.listdir(paths.join(workdir, "checkpoints")))

    model = load_model(workdir)  # what `eval --model gs://...` reads
    assert model.step == 6
    for i in range(3):  # `embed`: inputs and outputs on gs:// too
        paths.write_bytes(paths.join(root, "images", f"{i}.jpg"), image(i))
    paths.write_text(paths.join(root, "texts.txt"), "a photo of dots\n\na photo of blank\n")
    rows = embed_images_of(model, paths.join(root, "images"), paths.join(root, "e.npy"), 4)
    assert rows["rows"] == 3 and paths.read_text(paths.join(root, "e.txt")).splitlines() == [
        paths.join(root, "images", f"{i}.jpg") for i in range(3)]
    embed_texts_of(model, paths.join(root, "texts.txt"), paths.join(root, "t.npy"), 4)
    assert np.load(io.BytesIO(paths.read_bytes(paths.join(root, "t.npy")))).shape == (2, 16)
    out = paths.join(root, "export")
    assert export_checkpoint(workdir, "safetensors", out) == out
    exported = load_model(out)
    assert exported.step == 6
    ours, theirs = flatten(jax.device_get(model.state.params)), flatten(
        jax.device_get(exported.state.params))
    assert ours.keys() == theirs.keys()
    for name, value in ours.items():
        np.testing.assert_array_equal(value, theirs[name], err_msg=name)
    assert os.listdir(work) == []


def test_bad_gcs_inputs_are_one_line(gcs):
    config = run_config({"tfrecord": "gs://no-such-bucket/d/*.tfrecord",
                         "wds": "gs://cj-test/none-here/*.tar"})
    with pytest.raises(InputNotFoundError, match=r"^--workdir gs://no-such-bucket/w: the "
                                                 r"bucket gs://no-such-bucket does not exist$"):
        loop.setup(config, "gs://no-such-bucket/w")
    specs = parse_sources(config.data.sources)
    with pytest.raises(InputNotFoundError, match="gs://no-such-bucket does not exist"):
        create_source(specs[0], config.data)
    with pytest.raises(InputNotFoundError, match=r"no file matches 'gs://cj-test/none-here/\*"):
        create_source(specs[1], config.data)
