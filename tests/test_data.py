"""Data: idx parsing, the fashion_mnist_captions builder, captions/prompts, tokenizer.

The pipeline tests (resume, sharding, eval padding) are in test_data_pipeline.py. Both use
conftest's small fake Fashion-MNIST (random idx files), so no test needs the real 70k.
"""

from __future__ import annotations

import gzip
import os

import numpy as np
import pytest
import tensorflow as tf

from contrastive_jax.data import tokenizer as tok_lib
from contrastive_jax.datasets import fashion_mnist_captions as fmc
from contrastive_jax.datasets import idx

DEBIAN_DIR = fmc.DEFAULT_SOURCE_DIR


# --- idx ---------------------------------------------------------------------------------


def test_idx_roundtrip(tmp_path):
    images = np.arange(3 * 4 * 5, dtype=np.uint8).reshape(3, 4, 5)
    for name in ("x-idx3-ubyte.gz", "x-idx3-ubyte"):
        idx.write_idx(tmp_path / name, images)
        np.testing.assert_array_equal(idx.read_images(tmp_path / name), images)
    idx.write_idx(tmp_path / "y.gz", np.array([1, 2, 9]))
    np.testing.assert_array_equal(idx.read_labels(tmp_path / "y.gz"), [1, 2, 9])


def test_idx_errors(tmp_path):
    idx.write_idx(tmp_path / "labels.gz", np.zeros(10))
    with pytest.raises(idx.IdxFormatError, match="wrong magic"):
        idx.read_images(tmp_path / "labels.gz")
    # Body shorter than the header declares.
    idx.write_idx(tmp_path / "img", np.zeros((4, 28, 28)))
    data = (tmp_path / "img").read_bytes()
    (tmp_path / "short").write_bytes(data[:-100])
    with pytest.raises(idx.IdxFormatError, match="truncated"):
        idx.read_images(tmp_path / "short")
    # A cut gzip stream.
    gz = gzip.compress(data)
    (tmp_path / "short.gz").write_bytes(gz[: len(gz) // 2])
    with pytest.raises(idx.IdxFormatError, match="truncated"):
        idx.read_images(tmp_path / "short.gz")
    (tmp_path / "tiny").write_bytes(b"\x00\x00")
    with pytest.raises(idx.IdxFormatError):
        idx.read_labels(tmp_path / "tiny")


@pytest.mark.skipif(not os.path.isdir(DEBIAN_DIR), reason="dataset-fashion-mnist not installed")
def test_real_debian_files():
    for split, n in (("train", 60000), ("test", 10000)):
        images, labels = fmc.load_split(DEBIAN_DIR, split)
        assert images.shape == (n, 28, 28) and images.dtype == np.uint8
        # Fashion-MNIST is balanced: n/10 examples per class, labels 0..9.
        np.testing.assert_array_equal(np.bincount(labels, minlength=10), [n // 10] * 10)
        assert 0 < images[0].mean() < 255


def test_missing_source_says_how_to_get_it(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError) as e:
        fmc.build_fashion_mnist_captions(str(tmp_path / "tfds"), source=str(tmp_path))
    assert "apt-get install dataset-fashion-mnist" in str(e.value)
    assert fmc.SOURCE_DIR_ENV in str(e.value)
    monkeypatch.setenv(fmc.SOURCE_DIR_ENV, str(tmp_path / "nowhere"))
    assert fmc.source_dir() == str(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="nowhere"):
        fmc.build_fashion_mnist_captions(str(tmp_path / "tfds"))
    assert not (tmp_path / "tfds" / "fashion_mnist_captions").exists()


# --- captions and prompts ----------------------------------------------------------------


def test_captions_are_deterministic_and_name_their_class():
    captions = [fmc.caption_for("train", i, i % 10) for i in range(500)]
    assert captions == [fmc.caption_for("train", i, i % 10) for i in range(500)]
    assert len(set(captions)) > 100  # templates and synonyms both vary
    assert captions != [fmc.caption_for("test", i, i % 10) for i in range(500)]
    for i, caption in enumerate(captions):
        names = fmc.SYNONYMS[fmc.CLASS_NAMES[i % 10]]
        assert any(name in caption for name in names), caption
    assert fmc.fill_template("a photo of a {}.", "ankle boot") == "a photo of an ankle boot."
    assert fmc.fill_template("a {}", "bag") == "a bag"


def test_zeroshot_prompts_are_held_out():
    assert len(fmc.CLASS_NAMES) == 10
    assert not set(fmc.ZEROSHOT_TEMPLATES) & set(fmc.TRAIN_TEMPLATES)
    possible_train = {
        fill(t, name)
        for t in fmc.TRAIN_TEMPLATES
        for names in fmc.SYNONYMS.values()
        for name in names
        for fill in (fmc.fill_template, str.format)
    }
    prompts = {
        fill(t, name)
        for t in fmc.ZEROSHOT_TEMPLATES
        for name in fmc.CLASS_NAMES
        for fill in (fmc.fill_template, str.format)
    }
    assert not prompts & possible_train
    assert not {p.lower() for p in prompts} & {c.lower() for c in possible_train}


def test_builder_writes_splits_with_captions(fake_data_dir, fake_fashion_mnist_source):
    import tensorflow_datasets as tfds

    builder = tfds.builder("fashion_mnist_captions", data_dir=fake_data_dir)
    assert builder.info.splits["train"].num_examples == 200
    assert builder.info.splits["test"].num_examples == 50
    assert builder.info.features["label"].names == fmc.CLASS_NAMES
    images, labels = fmc.load_split(fake_fashion_mnist_source, "test")
    examples = list(tfds.as_numpy(builder.as_dataset(split="test")))
    for i, ex in enumerate(examples):  # stored in idx order
        assert ex["uid"].decode() == f"test/{i:06d}"
        np.testing.assert_array_equal(ex["image"][..., 0], images[i])
        assert ex["label"] == labels[i]
        assert ex["caption"].decode() == fmc.caption_for("test", i, int(labels[i]))
    again = fmc.build_fashion_mnist_captions(fake_data_dir)  # idempotent, no source needed
    assert again.info.splits["train"].num_examples == 200


# --- tokenizer ---------------------------------------------------------------------------


@pytest.fixture(scope="session")
def tokenizer(tmp_path_factory) -> tok_lib.Tokenizer:
    texts = [fmc.caption_for("train", i, i % 10) for i in range(2000)]
    prefix = str(tmp_path_factory.mktemp("tok") / "spm")
    return tok_lib.Tokenizer(tok_lib.train_tokenizer(texts, prefix, vocab_size=1000))


def test_tokenizer_encode(tokenizer):
    assert 20 < tokenizer.vocab_size <= 1000  # hard_vocab_limit=False: small corpus is fine
    ids = tokenizer.encode_batch(["a photo of a bag.", "", "A PHOTO OF A BAG."], max_len=12)
    assert ids.dtype == np.int32 and ids.shape == (3, 12)
    n = int(np.argmax(ids[0] == tok_lib.EOS_ID)) + 1
    assert n > 2 and ids[0, n - 1] == tok_lib.EOS_ID and (ids[0, n:] == 0).all()
    assert (ids[0, : n - 1] > tok_lib.UNK_ID).all()
    np.testing.assert_array_equal(ids[1], [tok_lib.EOS_ID] + [0] * 11)
    np.testing.assert_array_equal(ids[0], ids[2])  # the model case-folds
    assert tokenizer.decode(ids[0]) == "a photo of a bag."
    long = tokenizer.encode_batch(["a photo of a bag. " * 10], max_len=5)[0]
    assert long[-1] == tok_lib.EOS_ID and (long[:-1] > tok_lib.UNK_ID).all()


def test_tf_tokenize_in_dataset_matches_encode_batch(tokenizer):
    texts = [fmc.caption_for("test", i, i % 10) for i in range(37)]
    ds = tf.data.Dataset.from_tensor_slices(texts).batch(8)
    ds = ds.map(lambda s: tokenizer.tf_tokenize(s, 10))
    assert ds.element_spec.shape.as_list() == [None, 10]
    got = np.concatenate(list(ds.as_numpy_iterator()))
    np.testing.assert_array_equal(got, tokenizer.encode_batch(texts, 10))


def test_train_tokenizer_cli(tmp_path):
    path = tmp_path / "captions.txt"
    path.write_text("\n".join(fmc.caption_for("train", i, i % 10) for i in range(300)) + "\n\n")
    model = tok_lib.train_tokenizer_cli(str(path), str(tmp_path / "out" / "tok"), 200)
    assert model == str(tmp_path / "out" / "tok.model") and os.path.exists(model)
    assert tok_lib.Tokenizer(model).vocab_size <= 200
