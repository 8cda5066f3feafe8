"""Input pipelines: exact resume (in and across epochs, per process), eval padding, ops."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import tensorflow as tf

from contrastive_jax.data import pipeline, positions, preprocess, schema
from contrastive_jax.data.tokenizer import EOS_ID, Tokenizer
from contrastive_jax.datasets import fashion_mnist_captions as fmc

N_TRAIN, N_TEST = 200, 50


@pytest.fixture(scope="session")
def cfg(fake_data_dir):  # conftest: 200 train / 50 test fake examples
    config = schema.default_data_config()
    config.data_dir = fake_data_dir
    config.shuffle_buffer = 64  # smaller than an epoch: exercises the buffered shuffle
    config.tokenizer.vocab_size = 300
    return config


@pytest.fixture(scope="session")
def tokenizer(cfg, tmp_path_factory) -> Tokenizer:
    return pipeline.ensure_tokenizer(cfg, str(tmp_path_factory.mktemp("workdir")))


def take(ds: tf.data.Dataset, n: int) -> list[dict[str, np.ndarray]]:
    return list(itertools.islice(ds.as_numpy_iterator(), n))


def image_ids(batches) -> list[bytes]:
    """Fake images are random, so an image's bytes identify its example."""
    return [img.tobytes() for b in batches for img in b["image"]]


def assert_same(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert x.keys() == y.keys()
        for key in x:
            np.testing.assert_array_equal(x[key], y[key], err_msg=key)


def test_default_config_keys():
    config = schema.default_data_config()
    assert config.dataset == "fashion_mnist_captions" and config.data_dir is None
    assert {"path", "vocab_size"} == set(config.tokenizer.keys())
    for key in ("train_split", "eval_split", "image_size", "value_range", "flip",
                "shuffle_buffer", "max_len", "lowercase"):  # fmt: skip
        assert key in config


def test_train_batches(cfg, tokenizer):
    ds = pipeline.train_dataset(cfg, tokenizer, global_batch_size=32)
    assert ds.element_spec["image"].shape.as_list() == [32, 28, 28, 1]
    (batch,) = take(ds, 1)
    assert batch["image"].dtype == np.float32 and batch["text"].dtype == np.int32
    assert -1.0 <= batch["image"].min() < 0 < batch["image"].max() <= 1.0
    assert batch["text"].shape == (32, cfg.max_len)
    assert ((batch["text"] == EOS_ID).sum(axis=1) == 1).all()
    assert batch["label"].dtype == np.int32 and set(batch["label"]) <= set(range(10))


def test_epochs_cover_every_example_in_a_new_order(cfg, tokenizer):
    batches = take(pipeline.train_dataset(cfg, tokenizer, global_batch_size=20), 20)
    ids = image_ids(batches)
    epoch0, epoch1 = ids[:N_TRAIN], ids[N_TRAIN : 2 * N_TRAIN]
    assert len(set(epoch0)) == N_TRAIN and set(epoch0) == set(epoch1)
    assert epoch0 != epoch1
    other_seed = take(pipeline.train_dataset(cfg, tokenizer, global_batch_size=20, seed=1), 10)
    assert image_ids(other_seed) != epoch0


@pytest.mark.parametrize("flip", [False, True])
def test_exact_resume_within_and_across_epochs(cfg, tokenizer, flip):
    config = cfg.copy_and_resolve_references()
    config.flip = flip
    bs, n = 32, 16  # 16 batches = 512 examples = 2.56 epochs of 200
    full = take(pipeline.train_dataset(config, tokenizer, global_batch_size=bs, seed=3), n)
    for k in (2, 7, 13):  # inside epoch 0; 224 (epoch 1); 416 (epoch 2)
        resumed = pipeline.train_dataset(
            config, tokenizer, global_batch_size=bs, seed=3, start_example=k * bs
        )
        assert_same(take(resumed, n - k), full[k:])
    if flip:  # same order as without flips; each image kept or mirrored, both happen
        (plain,) = take(pipeline.train_dataset(cfg, tokenizer, global_batch_size=bs, seed=3), 1)
        a, b = plain["image"], full[0]["image"]
        same = (a == b).all(axis=(1, 2, 3))
        mirrored = (a[:, :, ::-1] == b).all(axis=(1, 2, 3))
        assert (same | mirrored).all() and same.any() and mirrored.any()


def test_saved_stream_positions_resume_exactly_without_counting_an_epoch(cfg, tokenizer,
                                                                         monkeypatch):
    config = cfg.copy_and_resolve_references()
    config.filters.basic.update(enabled=True, max_chars=1000)  # filtered: counting decodes
    bs, n = 32, 16  # 512 examples = 2.56 epochs of 200
    full = take(pipeline.train_dataset(config, tokenizer, global_batch_size=bs, seed=3), n)
    # One source; after batch k the position is (epoch, examples of it served).
    served = [positions.decode(b["stream_position"][0]) for b in full]
    assert served[0] == (0, 32) and served[6] == (1, 24) and served[12] == (2, 16)

    def no_counting(*args, **kwargs):
        raise AssertionError("a resume with saved positions counted an epoch")

    monkeypatch.setattr(pipeline, "_usable_up_to", no_counting)
    for k in (7, 13):  # resume after batch k - 1: in epochs 1 and 2
        resumed = pipeline.train_dataset(
            config, tokenizer, global_batch_size=bs, seed=3, start_example=k * bs,
            resume_positions=full[k - 1]["stream_position"].tolist())
        assert_same(take(resumed, n - k), full[k:])
    with pytest.raises(AssertionError, match="counted an epoch"):  # without them it counts
        pipeline.train_dataset(config, tokenizer, global_batch_size=bs, start_example=7 * bs)


def test_two_processes_read_disjoint_halves_and_resume(cfg, tokenizer):
    bs, n = 20, 10  # 10 local batches of 10 = one epoch of each half (100)
    streams = [
        take(
            pipeline.train_dataset(
                cfg, tokenizer, global_batch_size=bs, process_index=p, process_count=2
            ),
            n + 5,
        )  # fmt: skip
        for p in (0, 1)
    ]
    assert all(b["image"].shape[0] == bs // 2 for s in streams for b in s)
    halves = [set(image_ids(s[:n])) for s in streams]
    assert len(halves[0]) == len(halves[1]) == N_TRAIN // 2
    assert not halves[0] & halves[1]
    for p in (0, 1):
        k = 7  # resume at global example 140 -> 70 into this process's epoch of 100
        resumed = pipeline.train_dataset(cfg, tokenizer, global_batch_size=bs, process_index=p,
                                         process_count=2, start_example=k * bs)  # fmt: skip
        assert_same(take(resumed, n + 5 - k), streams[p][k:])
    with pytest.raises(ValueError, match="multiples"):
        pipeline.train_dataset(cfg, tokenizer, global_batch_size=21, process_count=2)


def test_resize_value_range_and_lowercase(cfg, tokenizer):
    config = cfg.copy_and_resolve_references()
    config.image_size, config.value_range = 32, (0.0, 1.0)
    (batch,) = take(pipeline.train_dataset(config, tokenizer, global_batch_size=8), 1)
    assert batch["image"].shape == (8, 32, 32, 1)
    assert 0.0 <= batch["image"].min() and batch["image"].max() <= 1.0
    assert preprocess.clean_captions(tf.constant([" A Photo of ÉTÉ "]), True).numpy()[0] == (
        "a photo of été".encode()
    )


def test_eval_padding_covers_every_example_once(cfg, fake_fashion_mnist_source):
    batches = take(pipeline.eval_dataset(cfg, split="test", batch_size=16), 100)
    assert len(batches) == 4  # 16 + 16 + 16 + 2 real
    masks = np.concatenate([b["mask"] for b in batches])
    assert masks.sum() == N_TEST and (masks[:N_TEST] == 1).all() and (masks[N_TEST:] == 0).all()
    assert all(b["image"].shape == (16, 28, 28, 1) for b in batches)
    _, labels = fmc.load_split(fake_fashion_mnist_source, "test")
    got = np.concatenate([b["label"] for b in batches])
    np.testing.assert_array_equal(got[:N_TEST], labels)
    assert (got[N_TEST:] == -1).all()
    assert (batches[-1]["image"][2:] == 0).all()


def test_empty_captions_are_skipped_and_reported(capfd):
    ds = tf.data.Dataset.from_tensor_slices(
        {"caption": ["a bag", "", "  ", "a coat"], "uid": ["u0", "u1", "u2", "u3"]}
    )
    ds = ds.filter(lambda ex: preprocess.valid_caption(ex["caption"], ex["uid"]))
    assert list(ds.map(lambda ex: ex["uid"]).as_numpy_iterator()) == [b"u0", b"u3"]
    err = capfd.readouterr().err
    assert "empty caption" in err and "u1" in err and "u2" in err and "u0" not in err


def test_ensure_tokenizer_reuses_saved_model(cfg, tmp_path):
    first = pipeline.ensure_tokenizer(cfg, str(tmp_path))
    assert first.model_path == str(tmp_path / "tokenizer.model")
    mtime = (tmp_path / "tokenizer.model").stat().st_mtime_ns
    second = pipeline.ensure_tokenizer(cfg, str(tmp_path))
    assert (tmp_path / "tokenizer.model").stat().st_mtime_ns == mtime
    texts = ["a photo of a bag.", "trouser"]
    np.testing.assert_array_equal(first.encode_batch(texts, 8), second.encode_batch(texts, 8))


def test_class_names(cfg):
    assert pipeline.class_names(cfg.dataset, cfg.data_dir) == fmc.CLASS_NAMES
