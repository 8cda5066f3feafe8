"""The one training stream on a TFDS dataset (`data.dataset`, a one-source tfds mixture):
epochs, flips, exact resume (in and across epochs, with saved positions, at another batch
size, per process), eval padding, the tokenizer and the catalogue.

One flipped reference stream (512 examples, 2.56 epochs of the 200 fake ones) is read once
per module and every resume is compared with it, row by row.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import tensorflow as tf

from contrastive_jax.data import augment, examples, positions, preprocess, schema
from contrastive_jax.data.labelled import split_of
from contrastive_jax.data.stream import train_dataset
from contrastive_jax.data.tokenizer import EOS_ID, Tokenizer
from contrastive_jax.data.tokenizer_setup import ensure_tokenizer
from contrastive_jax.datasets import fashion_mnist_captions as fmc
from contrastive_jax.datasets.catalogue import class_names
from contrastive_jax.errors import ConfigError

N_TRAIN, N_TEST = 200, 50
REF_BATCH, REF_BATCHES = 8, 64  # 512 examples


@pytest.fixture(scope="module")
def cfg(fake_data_dir):  # conftest: 200 train / 50 test fake examples
    config = schema.default_data_config()
    config.data_dir = fake_data_dir
    config.shuffle_buffer = 64  # smaller than an epoch: exercises the buffered shuffle
    config.tokenizer.vocab_size = 300
    # One logical stream per process: the tests below read a stream's own rows, counters
    # and positions (the default, 64 or fewer streams, is test_data_order.py's).
    config.logical_streams = 1
    return config


@pytest.fixture(scope="module")
def tokenizer(cfg, tmp_path_factory) -> Tokenizer:
    return ensure_tokenizer(cfg, str(tmp_path_factory.mktemp("workdir")))


@pytest.fixture(scope="module")
def flipped(cfg):
    config = cfg.copy_and_resolve_references()
    config.flip = True
    return config


@pytest.fixture(scope="module")
def reference(flipped, tokenizer) -> list[dict[str, np.ndarray]]:
    """The flipped stream (seed 3) in batches of 8, 64 of them."""
    return take(train_dataset(flipped, tokenizer, global_batch_size=REF_BATCH, seed=3),
                REF_BATCHES)


def take(ds: tf.data.Dataset, n: int) -> list[dict[str, np.ndarray]]:
    return list(itertools.islice(ds.as_numpy_iterator(), n))


def rows(batches) -> list[tuple[bytes, bytes, int]]:
    """(image, tokens, label) per example, in stream order."""
    return [(b["image"][i].tobytes(), b["text"][i].tobytes(), int(b["label"][i]))
            for b in batches for i in range(len(b["label"]))]


def example_ids(batches) -> list[bytes]:
    """Fake images are random: an image, mirrored or not, identifies its example."""
    return [min(img.tobytes(), img[:, ::-1].tobytes()) for b in batches for img in b["image"]]


def test_default_config_keys():
    config = schema.default_data_config()
    assert config.dataset == "fashion_mnist_captions" and config.data_dir is None
    assert {"path", "vocab_size"} == set(config.tokenizer.keys())
    for key in ("train_split", "eval_split", "image_size", "value_range", "flip",
                "shuffle_buffer", "max_len", "lowercase"):  # fmt: skip
        assert key in config


def test_train_batches_carry_counters_and_positions_and_decode_nothing(cfg, tokenizer,
                                                                      monkeypatch):
    def no_decode(*args, **kwargs):
        raise AssertionError("a TFDS tensor image was decoded")

    monkeypatch.setattr(augment, "decode", no_decode)  # stored decoded: passed through
    ds = train_dataset(cfg, tokenizer, global_batch_size=32)
    assert ds.element_spec["image"].shape.as_list() == [32, 28, 28, 1]
    first, second = take(ds, 2)
    batch = first
    assert batch["image"].dtype == np.float32 and batch["text"].dtype == np.int32
    assert -1.0 <= batch["image"].min() < 0 < batch["image"].max() <= 1.0
    assert batch["text"].shape == (32, cfg.max_len)
    assert ((batch["text"] == EOS_ID).sum(axis=1) == 1).all()
    assert batch["label"].dtype == np.int32 and set(batch["label"]) <= set(range(10))
    # One source: [seen, skipped per reason] and the position after the batch, in records.
    assert first["data_counts"].tolist() == [[32, 0, 0, 0, 0, 0]]
    assert second["data_counts"][0, 0] == 64
    assert [positions.decode(b["stream_position"][0]) for b in (first, second)] == [
        (0, 32), (0, 64)]


def test_epochs_cover_every_example_in_a_new_order(reference, flipped, tokenizer):
    ids = example_ids(reference)
    epoch0, epoch1 = ids[:N_TRAIN], ids[N_TRAIN : 2 * N_TRAIN]
    assert len(set(epoch0)) == N_TRAIN and set(epoch0) == set(epoch1)
    assert epoch0 != epoch1
    other_seed = take(train_dataset(flipped, tokenizer, global_batch_size=40, seed=1), 5)
    assert example_ids(other_seed) != epoch0


def test_flips_mirror_some_images_and_keep_the_order(reference, cfg, tokenizer):
    plain = take(train_dataset(cfg, tokenizer, global_batch_size=32, seed=3), 1)[0]["image"]
    flipped = np.concatenate([b["image"] for b in reference[:4]])
    same = (plain == flipped).all(axis=(1, 2, 3))
    mirrored = (plain[:, :, ::-1] == flipped).all(axis=(1, 2, 3))
    assert (same | mirrored).all() and same.any() and mirrored.any()


@pytest.mark.parametrize("batch_size", [32, 24])
def test_exact_resume_within_and_across_epochs_at_any_batch_size(reference, flipped,
                                                                   tokenizer, batch_size):
    """The stream of examples does not depend on the batch size: read in batches of 8 or of
    `batch_size`, resumed inside epoch 0, 1 or 2 (counting), the rows are the same."""
    full = rows(reference)
    for start in (64, 224, 416):  # not multiples of 24 either: a changed batch size
        n = (len(full) - start) // batch_size
        resumed = take(train_dataset(flipped, tokenizer, global_batch_size=batch_size, seed=3,
                                     start_example=start), n)  # fmt: skip
        assert rows(resumed) == full[start : start + n * batch_size], start
        # Each batch's position is the reference's after the same last example.
        ends = [(start + (i + 1) * batch_size) // REF_BATCH - 1 for i in range(n)]
        assert [b["stream_position"].tolist() for b in resumed] == [
            reference[j]["stream_position"].tolist() for j in ends]


def test_saved_stream_positions_resume_exactly_without_counting_an_epoch(reference, flipped,
                                                                         tokenizer,
                                                                         monkeypatch):
    # One source; after batch j the position is (epoch, records of it read).
    served = [positions.decode(b["stream_position"][0]) for b in reference]
    assert served[0] == (0, 8) and served[27] == (1, 24) and served[51] == (2, 16)

    def no_counting(*args, **kwargs):
        raise AssertionError("a resume with saved positions counted an epoch")

    monkeypatch.setattr(examples, "usable_per_epoch", no_counting)
    full = rows(reference)
    for start, batch_size in ((224, 32), (416, 12)):  # epochs 1 and 2; 12: another size
        n = (len(full) - start) // batch_size
        resumed = train_dataset(
            flipped, tokenizer, global_batch_size=batch_size, seed=3, start_example=start,
            resume_positions=reference[start // REF_BATCH - 1]["stream_position"].tolist())
        assert rows(take(resumed, n)) == full[start : start + n * batch_size]
    with pytest.raises(AssertionError, match="counted an epoch"):  # without them it counts
        train_dataset(flipped, tokenizer, global_batch_size=32, start_example=224)


def test_two_processes_read_disjoint_equal_halves_and_resume(cfg, tokenizer):
    bs, n = 20, 10  # 10 local batches of 10 = one epoch of each half (100)
    cfg = cfg.copy_and_resolve_references()
    cfg.logical_streams = 2  # one per process: its rows do not depend on the batch size
    streams = [take(train_dataset(cfg, tokenizer, global_batch_size=bs, process_index=p,
                                  process_count=2), n + 5)
               for p in (0, 1)]  # fmt: skip
    assert all(b["image"].shape[0] == bs // 2 for s in streams for b in s)
    halves = [example_ids(s[:n]) for s in streams]
    assert len(set(halves[0])) == len(set(halves[1])) == N_TRAIN // 2  # each once per epoch
    assert not set(halves[0]) & set(halves[1])
    for p in (0, 1):
        local = rows(streams[p])
        # Global example 140 -> 70 into this process's epoch of 100; 28: another batch size.
        for global_batch in (20, 28):
            resumed = take(train_dataset(cfg, tokenizer, global_batch_size=global_batch,
                                         process_index=p, process_count=2,
                                         start_example=140), 2)  # fmt: skip
            assert rows(resumed) == local[70 : 70 + global_batch]
    with pytest.raises(ConfigError, match="split evenly over the 2 logical streams"):
        train_dataset(cfg, tokenizer, global_batch_size=21, process_count=2)


def test_uneven_split_gives_every_process_an_equal_part(cfg, tokenizer):
    config = cfg.copy_and_resolve_references()
    config.train_split = "train[:99]"  # 3 x 33: the processes stay in step per epoch
    config.logical_streams = 0  # the default: 3 streams here (3 does not divide 64)
    parts = [example_ids(take(train_dataset(config, tokenizer, global_batch_size=33,
                                            process_index=p, process_count=3), 3))
             for p in range(3)]  # fmt: skip
    assert [len(set(p)) for p in parts] == [33, 33, 33]
    assert len(set().union(*parts)) == 99


def test_resize_value_range_and_lowercase(cfg, tokenizer):
    config = cfg.copy_and_resolve_references()
    config.image_size, config.value_range = 32, (0.0, 1.0)
    (batch,) = take(train_dataset(config, tokenizer, global_batch_size=8), 1)
    assert batch["image"].shape == (8, 32, 32, 1)
    assert 0.0 <= batch["image"].min() and batch["image"].max() <= 1.0
    assert preprocess.clean_captions(tf.constant([" A Photo of ÉTÉ "]), True).numpy()[0] == (
        "a photo of été".encode()
    )


def test_eval_padding_covers_every_example_once(cfg, fake_fashion_mnist_source):
    batches = list(split_of(cfg, "test").batches(16))
    assert len(batches) == 4  # 16 + 16 + 16 + 2 real
    masks = np.concatenate([b["mask"] for b in batches])
    assert masks.sum() == N_TEST and (masks[:N_TEST] == 1).all() and (masks[N_TEST:] == 0).all()
    assert all(b["image"].shape == (16, 28, 28, 1) for b in batches)
    _, expected = fmc.load_split(fake_fashion_mnist_source, "test")
    got = np.concatenate([b["label"] for b in batches])
    np.testing.assert_array_equal(got[:N_TEST], expected)
    np.testing.assert_array_equal(split_of(cfg, "test").labels, expected)
    assert (got[N_TEST:] == -1).all()
    assert (batches[-1]["image"][2:] == 0).all()


def test_ensure_tokenizer_reuses_saved_model(cfg, tmp_path):
    first = ensure_tokenizer(cfg, str(tmp_path))
    assert first.model_path == str(tmp_path / "tokenizer.model")
    mtime = (tmp_path / "tokenizer.model").stat().st_mtime_ns
    second = ensure_tokenizer(cfg, str(tmp_path))
    assert (tmp_path / "tokenizer.model").stat().st_mtime_ns == mtime
    texts = ["a photo of a bag.", "trouser"]
    np.testing.assert_array_equal(first.encode_batch(texts, 8), second.encode_batch(texts, 8))


def test_class_names(cfg):
    assert class_names(cfg.dataset, cfg.data_dir) == fmc.CLASS_NAMES


def test_a_counting_resume_ignores_the_count_of_another_split(cfg, tokenizer, monkeypatch):
    monkeypatch.setattr(examples, "_COUNT_CACHE", {})  # as in a fresh process
    small = cfg.copy_and_resolve_references()
    small.train_split = "train[:100]"
    full = rows(take(train_dataset(cfg, tokenizer, global_batch_size=10), 17))
    take(train_dataset(small, tokenizer, global_batch_size=10, start_example=150), 1)
    resumed = take(train_dataset(cfg, tokenizer, global_batch_size=10, start_example=150), 2)
    assert rows(resumed) == full[150:170]
