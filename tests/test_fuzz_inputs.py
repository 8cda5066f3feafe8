"""Damaged inputs end in one line, never a traceback: one small valid input per reader a
user points at files, and seeded mutants of it (truncated, a byte flipped in the head or
the body, emptied, deleted, random bytes). Every mutant is read without error (skipped
and counted) or refused with the project's error type (the CLI's one line, exit 2); no
other exception, within a time bound. Readers run in-process; a few mutants go through
the command line too."""

import collections
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time

import jax
import numpy as np
import pytest
from helpers import tiny_config
from PIL import Image

from contrastive_jax.errors import UserError

SEED = 20261206
KINDS = ("truncated", "head_flip", "body_flip", "emptied", "deleted", "random")
SECONDS_PER_MUTANT = 10  # a reader that hangs on damage fails, whatever the machine


def mutate(path: str, kind: str, rng: np.random.Generator) -> None:
    """Damages `path` in place, as `kind` says."""
    if kind == "deleted":
        os.remove(path)
        return
    data = bytearray(open(path, "rb").read())
    if kind == "truncated":
        data = data[:int(rng.integers(0, max(1, len(data))))]
    elif kind in ("head_flip", "body_flip"):
        head = min(len(data), 64)
        lo, hi = (0, head) if kind == "head_flip" or len(data) <= head else (head, len(data))
        at = int(rng.integers(lo, max(lo + 1, hi)))
        if data:
            data[at % len(data)] ^= int(rng.integers(1, 256))
    elif kind == "emptied":
        data = bytearray()
    elif kind == "random":
        data = bytearray(rng.integers(0, 256, size=max(16, len(data)), dtype=np.uint8))
    with open(path, "wb") as f:
        f.write(bytes(data))


def run_mutants(tally, reader: str, valid_dir: str, files: list[str], read, tmp_path):
    """Reads each mutant of each of `files` (relative to the copied `valid_dir`) with
    `read(dir)`; tallies reader -> outcome ("ok" or "error") -> count."""
    rng = np.random.default_rng([SEED, len(reader), sum(map(ord, reader))])
    read(valid_dir)  # the valid input itself reads
    for name in files:
        for kind in KINDS:
            work = str(tmp_path / f"{reader}-{name.replace('/', '_')}-{kind}")
            shutil.copytree(valid_dir, work)
            mutate(os.path.join(work, name), kind, rng)
            start = time.monotonic()
            try:
                read(work)
                outcome = "ok"
            except UserError as e:
                message = str(e)
                assert message and "\n" not in message.strip(), (reader, name, kind, message)
                outcome = "error"
            assert time.monotonic() - start < SECONDS_PER_MUTANT, (reader, name, kind)
            tally[reader][outcome] += 1
            shutil.rmtree(work)


@pytest.fixture(scope="module")
def tally():
    counts = collections.defaultdict(collections.Counter)
    yield counts
    # The counts for the note: pytest -s shows them.
    print("\nfuzz mutants per reader:", json.dumps({k: dict(v) for k, v in counts.items()}))


CLIP_MODEL = {
    "embed_dim": 24, "bias_init": None, "temperature_init": 14.0, "proj_bias": False,
    "image": {"pool": "cls", "pre_norm": True, "mlp_dim": 48, "depth": 1},
    "text": {"pool": "last", "causal": True, "width": 24, "num_heads": 3, "depth": 1},
}


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """A random tiny CLIP, exported in every format: format -> directory."""
    from contrastive_jax.data.tokenizer import train_tokenizer
    from contrastive_jax.export.hf import export_hf
    from contrastive_jax.export.native import export_weights
    from contrastive_jax.export.open_clip_format import export_open_clip
    from contrastive_jax.models import complete_config
    from contrastive_jax.models.state import ModelDef

    root = tmp_path_factory.mktemp("exports")
    config = tiny_config(model=CLIP_MODEL)
    params, _ = ModelDef.init(complete_config(config.model), jax.random.key(0))
    params = jax.tree.map(np.asarray, params)
    tok = train_tokenizer(["a photo of a dog", "a red dress on a chair",
                           "two boys throwing stones"] * 20, str(root / "spm"), 64)
    out = {fmt: str(root / fmt) for fmt in ("npz", "safetensors", "hf", "open_clip")}
    for fmt in ("npz", "safetensors"):
        export_weights(fmt, config, params, 3, tok, out[fmt])
    export_hf(config, params, 3, tok, out["hf"])
    export_open_clip(config, params, 3, tok, out["open_clip"])
    return out


def _read_export(spec_prefix: str):
    from contrastive_jax.config import default_config
    from contrastive_jax.export.hf_import import exported_step, import_model
    from contrastive_jax.export.native import load_exported

    def read(path):
        if not spec_prefix:
            load_exported(path)
            return
        import_model(f"{spec_prefix}{path}", default_config())
        exported_step(path)

    return read


EXPORT_FILES = {
    "npz": ("", ["export_config.json", "params.npz", "tokenizer.model"]),
    "safetensors": ("", ["export_config.json", "model.safetensors", "tokenizer.model"]),
    "hf": ("hf:", ["config.json", "processor_config.json", "contrastive_jax_export.json",
                   "model.safetensors", "spiece.model"]),
    "open_clip": ("open_clip:", ["open_clip_config.json", "contrastive_jax_export.json",
                                 "open_clip_model.safetensors", "spiece.model"]),
}


@pytest.mark.parametrize("fmt", list(EXPORT_FILES))
def test_every_file_of_every_export_format(exports, fmt, tally, tmp_path):
    prefix, files = EXPORT_FILES[fmt]
    run_mutants(tally, f"export {fmt}", exports[fmt], files, _read_export(prefix), tmp_path)


def _png(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 255, (12, 14, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, "PNG")
    return out.getvalue()


CAPTIONS = ["a dog on a sofa", "two boys throwing stones", "a red dress"]


@pytest.fixture(scope="module")
def data_inputs(tmp_path_factory):
    """One small valid input per data reader: reader -> (directory, the file to damage)."""
    import tensorflow as tf

    from contrastive_jax.data import records

    root = tmp_path_factory.mktemp("data_inputs")
    made = {}
    d = root / "tfrecord"
    d.mkdir()
    with tf.io.TFRecordWriter(str(d / "a.tfrecord")) as w:
        for i, caption in enumerate(CAPTIONS):
            w.write(records.serialize_example(_png(i), caption, f"uid{i}", i))
    made["tfrecord"] = (str(d), "a.tfrecord")
    d = root / "tar"
    d.mkdir()
    with tarfile.open(d / "a.tar", "w") as tar:
        for i, caption in enumerate(CAPTIONS):
            for ext, data in (("png", _png(i)), ("txt", caption.encode())):
                info = tarfile.TarInfo(f"k{i}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    made["tar"] = (str(d), "a.tar")
    for ext in ("csv", "jsonl"):
        d = root / ext
        d.mkdir()
        for i in range(len(CAPTIONS)):
            (d / f"{i}.png").write_bytes(_png(i))
        rows = [{"image": f"{i}.png", "caption": c, "label": i} for i, c in enumerate(CAPTIONS)]
        if ext == "csv":
            text = "image,caption,label\n" + "".join(f"{r['image']},{r['caption']},{r['label']}\n"
                                                    for r in rows)
        else:
            text = "".join(json.dumps(r) + "\n" for r in rows)
        (d / f"table.{ext}").write_text(text)
        made[f"table {ext}"] = (str(d), f"table.{ext}")
    made["image"] = (made["table csv"][0], "0.png")
    d = root / "texts"
    d.mkdir()
    (d / "texts.txt").write_text("".join(c + "\n" for c in CAPTIONS))
    made["text lines"] = (str(d), "texts.txt")
    return made


def _data_config(source: dict):
    from contrastive_jax.data import schema

    cfg = schema.default_data_config()
    cfg.sources = (source,)
    cfg.image_size, cfg.max_len, cfg.shuffle_buffer, cfg.cycle_length = 8, 8, 5, 2
    return cfg


def _captions(kind: str, path: str) -> None:
    """The tokenizer's captions of a one-source run: the whole stream of it, counted."""
    from contrastive_jax.data.stream import source_captions

    list(source_captions(_data_config({"kind": kind, "pattern": path}), 100))


def _folder_captions(path: str) -> None:
    from contrastive_jax.data.stream import source_captions

    list(source_captions(_data_config({"kind": "table", "path": path}), 100))


def _folder_images(path: str) -> None:
    """Every usable example of a folder source, images decoded (the training path)."""
    from contrastive_jax.data.stream import whole_sources

    for ds in whole_sources(_data_config({"kind": "table", "path": path})):
        list(ds.as_numpy_iterator())


def _text_lines(path: str) -> None:
    from contrastive_jax.evaluate.embed_files import read_texts

    read_texts(path)


DATA_READERS = {
    "tfrecord": lambda d: _captions("tfrecord", os.path.join(d, "a.tfrecord")),
    "tar": lambda d: _captions("webdataset", os.path.join(d, "a.tar")),
    "table csv": lambda d: _folder_captions(os.path.join(d, "table.csv")),
    "table jsonl": lambda d: _folder_captions(os.path.join(d, "table.jsonl")),
    "image": lambda d: _folder_images(os.path.join(d, "table.csv")),
    "text lines": lambda d: _text_lines(os.path.join(d, "texts.txt")),
}


@pytest.mark.parametrize("reader", list(DATA_READERS))
def test_every_data_reader(data_inputs, reader, tally, tmp_path):
    directory, name = data_inputs[reader]
    run_mutants(tally, reader, directory, [name], DATA_READERS[reader], tmp_path)


def _damaged_copy(src: str, dst, name: str, kind: str) -> str:
    shutil.copytree(src, dst)
    mutate(os.path.join(dst, name), kind, np.random.default_rng(SEED))
    return str(dst)


def test_the_command_line_prints_one_line_and_exits_2(exports, data_inputs, tmp_path):
    """`embed --model` of a damaged export, as a user runs it: no traceback."""
    model = _damaged_copy(exports["npz"], tmp_path / "npz", "export_config.json", "truncated")
    texts = os.path.join(*data_inputs["text lines"])
    out = subprocess.run([sys.executable, "-m", "contrastive_jax.cli", "embed", "--model",
                          model, "--texts", texts, "--out", str(tmp_path / "x.npy")],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 2, out.stderr[-2000:]
    assert "Traceback" not in out.stderr
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("error: export config ") and "export_config.json is damaged" in last


@pytest.mark.parametrize("name", ["config.json", "processor_config.json",
                                  "contrastive_jax_export.json"])
def test_embed_of_a_damaged_hf_export_is_one_line(exports, data_inputs, tmp_path, capsys,
                                                  name):
    from contrastive_jax import cli

    model = _damaged_copy(exports["hf"], tmp_path / "hf", name, "head_flip")
    texts = os.path.join(*data_inputs["text lines"])
    argv = ["embed", "--model", f"hf:{model}", "--texts", texts, "--out", str(tmp_path / "x")]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and name in err[-1] and "damaged" in err[-1]


@pytest.mark.parametrize("kind", ["emptied", "head_flip"])
def test_training_on_a_source_with_no_usable_record_is_one_line(data_inputs, tmp_path,
                                                                capsys, kind):
    """The tokenizer is trained on the captions first: without one, the run names the
    source and its skipped records by reason instead of failing inside sentencepiece."""
    from contrastive_jax import cli

    shard = os.path.join(_damaged_copy(data_inputs["tfrecord"][0], tmp_path / "data",
                                       "a.tfrecord", kind), "a.tfrecord")
    argv = ["train", "--config", "configs/demo_siglip.py:steps=2", "--workdir",
            str(tmp_path / "run"), f"--config.data.sources=({{'kind': 'tfrecord', "
            f"'pattern': '{shard}'}},)", "--config.data.dataset=", "--config.data.channels=1",
            "--config.train.progress_bar=False"]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith(f"error: training source tfrecord {shard} has no usable caption")
    assert "skipped: " in err


@pytest.mark.parametrize("key", ["model", "text", "train_config", "step"])
def test_an_export_card_that_lost_a_key_is_one_line(exports, tmp_path, key):
    """A flipped byte inside a key name leaves valid JSON without that key."""
    from contrastive_jax.errors import DataError
    from contrastive_jax.export.native import load_exported

    work = shutil.copytree(exports["npz"], tmp_path / "npz")
    card = json.loads((work / "export_config.json").read_text())
    card[key + "_"] = card.pop(key)
    (work / "export_config.json").write_text(json.dumps(card))
    with pytest.raises(DataError, match=rf"export_config.json is damaged: key '{key}' is "
                                        "missing"):
        load_exported(str(work))
