"""data.sources: every source kind, shard split, exact resume (1 and 2 processes), mixing,
bad records counted per reason, and the counters in metrics.jsonl."""

from __future__ import annotations

import csv
import io
import itertools
import json
import tarfile

import numpy as np
import pytest
import tensorflow as tf
from helpers import tiny_config

from contrastive_jax.config import validate
from contrastive_jax.data import examples, formats, mixture, positions, records, schema, stream
from contrastive_jax.data.filters import FilterCounters
from contrastive_jax.data.sources import create_source, parse_source
from contrastive_jax.data.tokenizer import Tokenizer, train_tokenizer
from contrastive_jax.data.tokenizer_setup import text_renderer
from contrastive_jax.errors import ConfigError, InputNotFoundError

RNG = np.random.default_rng(0)


def jpeg(size: int = 12) -> bytes:
    pixels = RNG.integers(0, 255, (size, size + 2, 3))
    return tf.io.encode_jpeg(tf.constant(pixels, tf.uint8)).numpy()


def write_shard(path: str, rows) -> None:
    """rows: (image bytes, caption, label)."""
    with tf.io.TFRecordWriter(path) as w:
        for image, caption, label in rows:
            w.write(records.serialize_example(image, caption, f"uid{label}", label))


def write_tar(path: str, samples) -> None:
    """samples: (key, {ext: bytes})."""
    with tarfile.open(path, "w") as tar:
        for key, files in samples:
            for ext, data in files.items():
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """4 good TFRecord shards x 6 examples (labels 0..23) and a second source (100..111)."""
    d = tmp_path_factory.mktemp("corpus")
    for s in range(4):
        write_shard(str(d / f"a-{s:05d}-of-00004.tfrecord"),
                    [(jpeg(), f"photo of thing {6 * s + i}", 6 * s + i) for i in range(6)])
    for s in range(2):
        write_shard(str(d / f"b-{s:05d}-of-00002.tfrecord"),
                    [(jpeg(), f"picture {i}", 100 + 6 * s + i) for i in range(6)])
    return d


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory) -> Tokenizer:
    texts = [f"photo of thing {i}" for i in range(30)] + [f"picture {i} a b c" for i in range(30)]
    return Tokenizer(train_tokenizer(texts, str(tmp_path_factory.mktemp("tok") / "spm"), 48))


def data_cfg(*sources, **overrides):
    cfg = schema.default_data_config()
    cfg.sources = tuple(sources)
    cfg.image_size, cfg.max_len, cfg.shuffle_buffer, cfg.cycle_length = 8, 8, 5, 2
    # One logical stream: these tests read its own counters and positions (the default,
    # several streams, is 0: test_data_order.py, and the tests below that set it).
    cfg.logical_streams = 1
    for key, value in overrides.items():
        cfg[key] = value
    return cfg


def tfrecords(corpus, prefix="a", **extra):
    return {"kind": "tfrecord", "pattern": str(corpus / f"{prefix}-*.tfrecord"), **extra}


def batches(cfg, tok, n, batch=4, **kw):
    ds = stream.train_dataset(cfg, tok, global_batch_size=batch, **kw)
    return list(itertools.islice(ds.as_numpy_iterator(), n))


def labels(bs):
    return [int(x) for b in bs for x in b["label"]]


def assert_same(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        for key in ("image", "text", "label"):
            np.testing.assert_array_equal(x[key], y[key], err_msg=key)


def test_tfrecord_epochs_cover_every_example(corpus, tokenizer):
    bs = batches(data_cfg(tfrecords(corpus)), tokenizer, 12)
    assert bs[0]["image"].shape == (4, 8, 8, 3) and bs[0]["text"].shape == (4, 8)
    epoch0, epoch1 = labels(bs[:6]), labels(bs[6:])
    assert sorted(epoch0) == sorted(epoch1) == list(range(24))
    assert epoch0 != epoch1  # reshuffled per epoch
    assert bs[-1]["data_counts"].tolist() == [[48, 0, 0, 0, 0, 0]]


def test_shard_split_is_disjoint_across_processes(corpus, tokenizer):
    cfg = data_cfg(tfrecords(corpus), logical_streams=0)
    parts = [labels(batches(cfg, tokenizer, 12, batch=4, process_index=i, process_count=2))
             for i in range(2)]  # 6 local batches of 2 per epoch: two epochs each
    assert sorted(parts[0][:12]) == sorted(parts[0][12:])
    assert not set(parts[0]) & set(parts[1])
    assert set(parts[0]) | set(parts[1]) == set(range(24))
    # 5 processes, 4 files: 5 logical streams; the fifth shares file 0 (its odd records).
    assert sorted(labels(batches(cfg, tokenizer, 3, batch=5, process_index=4,
                                 process_count=5))) == [1, 3, 5]


@pytest.mark.parametrize("process_count", [1, 2])
def test_exact_resume_with_augmentation(corpus, tokenizer, process_count):
    cfg = data_cfg(tfrecords(corpus), flip=True, logical_streams=0)
    cfg.augment.update(inception_crop=True, color_jitter=0.5, grayscale=0.3,
                       word_deletion=0.2, word_swaps=1)
    for p in range(process_count):
        kw = dict(process_index=p, process_count=process_count)
        full = batches(cfg, tokenizer, 9, **kw)
        # Step 3 is inside the first epoch (24 examples per epoch over all processes), where
        # resume counts no further than its position; step 7 is inside the second epoch.
        for step in (3, 7):
            assert_same(full[step : step + 2],
                        batches(cfg, tokenizer, 2, start_example=4 * step, **kw))


def test_mixing_follows_weights_and_resumes(corpus, tokenizer):
    cfg = data_cfg(tfrecords(corpus, weight=3.0), tfrecords(corpus, "b", weight=1.0))
    full = batches(cfg, tokenizer, 40)
    share_a = np.mean([x < 100 for x in labels(full)])
    assert 0.65 < share_a < 0.85, share_a
    assert_same(full[23:26], batches(cfg, tokenizer, 3, start_example=4 * 23))
    seen = full[-1]["data_counts"][:, 0]
    assert seen.sum() == 160 and abs(seen[0] / 160 - share_a) < 0.02


def test_mixture_positions_match_the_choice_stream():
    weights, position = (0.2, 0.5, 0.3), 4096 + 300  # crosses a choice block
    choices = np.fromiter(mixture.mixture_choices(weights, 3, 0).take(position + 50)
                          .as_numpy_iterator(), np.int64)  # fmt: skip
    assert mixture.mixture_positions(weights, 3, position) == np.bincount(
        choices[:position], minlength=3).tolist()
    tail = list(mixture.mixture_choices(weights, 3, position).take(50).as_numpy_iterator())
    assert tail == choices[position:].tolist()


def test_webdataset_keys():
    assert formats.split_key("a/b.c/k0.seg.JPG") == ("a/b.c/k0", "seg.jpg")
    assert formats.split_key("a/k1.txt") == ("a/k1", "txt")
    assert formats.split_key("a/README") is None


def test_wds_and_folder_sources(tmp_path, tokenizer):
    write_tar(str(tmp_path / "s-0.tar"), [
        (f"dir/k{i}", {"jpg": jpeg(), "txt": f"picture {i}".encode(),
                       "json": json.dumps({"label": i}).encode()}) for i in range(3)])
    write_tar(str(tmp_path / "s-1.tar"), [  # caption from .json, uppercase extension
        (f"k{i}", {"PNG": tf.io.encode_png(tf.zeros([5, 5, 3], tf.uint8)).numpy(),
                     "json": json.dumps({"caption": f"photo {i}", "label": i + 3}).encode()})
        for i in range(3)])  # fmt: skip
    ds_labels = labels(batches(data_cfg({"kind": "webdataset", "pattern": str(tmp_path / "*.tar")}),
                               tokenizer, 3, batch=2))  # fmt: skip
    assert sorted(ds_labels) == list(range(6))

    (tmp_path / "img").mkdir()
    rows = []
    for i in range(4):
        (tmp_path / "img" / f"{i}.jpg").write_bytes(jpeg())
        rows.append({"image": f"img/{i}.jpg", "caption": f"photo of thing {i}", "label": i})
    with open(tmp_path / "t.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, ["image", "caption", "label"])
        writer.writeheader()
        writer.writerows(rows)
    (tmp_path / "t.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    for table in ("t.csv", "t.jsonl"):
        cfg = data_cfg({"kind": "table", "path": str(tmp_path / table)})
        assert sorted(labels(batches(cfg, tokenizer, 2, batch=2))) == [0, 1, 2, 3]


def final_counts(cfg) -> dict[str, float]:
    """Counters after one sequential pass over every unit of the (only) source."""
    source = create_source(parse_source(cfg.sources[0]), cfg)
    ds = examples.usable(examples.read_all(source, 1), cfg)
    last = ds.reduce(tf.zeros([len(records.COUNTER_KEYS)], tf.int64), lambda _, ex: ex["counts"])
    return {k: v for k, v in stream.counter_metrics(last.numpy()).items() if v}


@pytest.fixture(scope="module")
def bad_corpus(tmp_path_factory):
    """Read order: a (3 bad + 3 good), b (truncated after 3), c (missing), d (2 bad + 5 good)."""
    d = tmp_path_factory.mktemp("bad")
    bad = [(b"not an image", "undecodable", 0), (jpeg(), " ", 1), (jpeg(), "", 2)]
    write_shard(str(d / "a.tfrecord"), bad + [(jpeg(), "ok", 3 + i) for i in range(3)])
    path = str(d / "b.tfrecord")
    write_shard(path, [(jpeg(), "ok", 10 + i) for i in range(4)])
    data = open(path, "rb").read()
    open(path, "wb").write(data[: len(data) - 40])  # cuts into the 4th record
    # A non-UTF-8 caption cannot come through serialize_example (it takes str): raw bytes.
    ex = tf.train.Example(features=tf.train.Features(feature={
        "image": tf.train.Feature(bytes_list=tf.train.BytesList(value=[jpeg()])),
        "caption": tf.train.Feature(bytes_list=tf.train.BytesList(value=[b"caf\xe9"]))}))
    with tf.io.TFRecordWriter(str(d / "d.tfrecord")) as w:
        w.write(ex.SerializeToString())
        w.write(b"\x01\x02 not a tf.train.Example")  # does not parse: counted as undecodable
        for i in range(5):
            w.write(records.serialize_example(jpeg(), "ok", "u", 20 + i))
    return d


def test_bad_records_counted_per_reason(bad_corpus, tmp_path, caplog):
    files = [str(bad_corpus / f"{n}.tfrecord") for n in "abcd"]
    cfg = data_cfg({"kind": "tfrecord", "pattern": files})
    assert final_counts(cfg) == {
        "data/seen": 3 + 3 + 5, "data/skipped/undecodable_image": 2,
        "data/skipped/empty_caption": 2, "data/skipped/non_utf8_caption": 1,
        "data/skipped/truncated_shard": 1, "data/skipped/missing_file": 1}  # fmt: skip
    assert "b.tfrecord" in caplog.text and "c.tfrecord" in caplog.text

    tar = str(tmp_path / "t.tar")
    write_tar(tar, [(f"k{i}", {"jpg": jpeg(40), "txt": b"ok"}) for i in range(3)])
    # Counts reach the stream with the next usable example: a good shard comes last.
    write_tar(str(tmp_path / "u.tar"), [("k", {"jpg": jpeg(), "txt": b"ok"})])
    with tarfile.open(tar) as t:
        last = t.getmembers()[-2]  # the third sample's image
    with open(tar, "r+b") as f:
        f.truncate(last.offset_data + last.size // 2)
    assert final_counts(data_cfg({"kind": "webdataset", "pattern": str(tmp_path / "*.tar")})) == {
        "data/seen": 3, "data/skipped/truncated_shard": 1}

    (tmp_path / "x.jsonl").write_text(
        json.dumps({"image": "nowhere.jpg", "caption": "a"}) + "\n" +
        json.dumps({"image": tar, "caption": "tar bytes are no image"}) + "\n" +
        json.dumps({"image": "y.jpg", "caption": "good"}) + "\n")
    (tmp_path / "y.jpg").write_bytes(jpeg())
    assert final_counts(data_cfg({"kind": "table", "path": str(tmp_path / "x.jsonl")})) == {
        "data/seen": 1, "data/skipped/missing_file": 1, "data/skipped/undecodable_image": 1}


def test_bad_source_configs_are_one_line_errors(corpus):
    config = tiny_config(data={"sources": ({"kind": "s3"},)})
    with pytest.raises(ConfigError, match=r"'data.sources\[0\].kind': unknown source kind 's3'"):
        validate(config)
    config = tiny_config(data={"sources": ({"kind": "webdataset", "pattern": "x",
                                            "path": "y"},)})
    with pytest.raises(ConfigError,
                       match=r"'data.sources\[0\].path': unknown for kind 'webdataset'"):
        validate(config)
    config = tiny_config(data={"sources": (tfrecords(corpus),)})
    with pytest.raises(ConfigError, match="'data.channels' \\(3\\) differs"):
        validate(config)
    with pytest.raises(InputNotFoundError, match="no file matches"):
        create_source(parse_source({"kind": "tfrecord", "pattern": "/nonexistent/*.tfrecord"}),
                      data_cfg())


def test_train_loop_writes_data_counters(bad_corpus, tmp_path):
    from contrastive_jax.train import loop

    files = [str(bad_corpus / f"{n}.tfrecord") for n in "abcd"]
    config = tiny_config(
        data={"sources": ({"kind": "tfrecord", "pattern": files},), "channels": 1,
              "image_size": 28, "cycle_length": 1, "shuffle_buffer": 1,
              "tokenizer": {"vocab_size": 40},
              "logical_streams": 1},  # 8 (the default) would give shard c, missing, its own
        train={"steps": 2, "batch_size": 8}, optimizer={"warmup_steps": 1})
    validate(config)
    loop.train(config, str(tmp_path))
    lines = [json.loads(x) for x in open(tmp_path / "metrics.jsonl")]
    last = [x for x in lines if "data/seen" in x][-1]
    assert last["step"] == 2 and last["data/seen"] >= 16
    assert type(last["data/seen"]) is int  # a count, written as 16, not 16.0
    for reason in records.REASONS:  # two epochs of 11: every bad record met at least once
        assert last[f"data/skipped/{reason}"] >= 1, reason


def test_tfds_source_mixed_with_tfrecords(fake_data_dir, corpus, tokenizer):
    """A TFDS dataset by name (grey tensors, tiled to RGB) mixed with TFRecord shards."""
    tfds_source = {"kind": "tfds", "name": "fashion_mnist_captions", "data_dir": fake_data_dir}
    cfg = data_cfg(tfds_source, tfrecords(corpus, "b"), image_size=28,  # labels >= 100
                   logical_streams=0)  # 8 streams: even parts of the split, files of b
    bs = batches(cfg, tokenizer, 8, batch=8)
    assert bs[0]["image"].shape == (8, 28, 28, 3)
    from_tfds = [x for x in labels(bs) if x < 100]
    assert 16 < len(from_tfds) < 48  # weights 1:1 over 64 examples
    # Running maxima (a batch holds one example of each stream) [stream, source], summed.
    seen = np.max([b["data_counts"] for b in bs], axis=0).reshape(8, 2, -1)[..., 0].sum(0)
    assert seen.tolist() == [len(from_tfds), 64 - len(from_tfds)]


def test_tfds_streams_cover_the_whole_split(fake_data_dir):
    """Logical streams of a TFDS split that they do not divide take parts differing by one
    example at most: no example of the split is left out of every epoch."""
    spec = parse_source({"kind": "tfds", "name": "fashion_mnist_captions",
                         "data_dir": fake_data_dir})
    source = create_source(spec, data_cfg(spec))
    total = source.builder.info.splits["train"].num_examples
    streams = 7 if total % 7 else 11  # a count that does not divide the split
    assert total % streams
    takes = [sum(take for _, _, take in units) for units in source.unit_lists(streams)]
    assert sum(takes) == total and max(takes) - min(takes) == 1, takes


def test_saved_positions_resume_a_filtered_mixture_without_counting(corpus, tokenizer,
                                                                     monkeypatch):
    cfg = data_cfg(tfrecords(corpus, weight=3.0), tfrecords(corpus, "b", weight=1.0))
    cfg.filters.basic.update(enabled=True, max_chars=16)  # source a: 10 of 24 kept
    full = batches(cfg, tokenizer, 30)
    running = np.maximum.accumulate(np.stack([b["stream_position"] for b in full]))
    # 120 examples: source a (10 usable per epoch) is several epochs in; b (12) at least one.
    epochs = [positions.decode(p)[0] for p in running[-1]]
    assert epochs[0] >= 5 and epochs[1] >= 1, epochs

    def no_counting(*args, **kwargs):
        raise AssertionError("a resume with saved positions counted an epoch")

    monkeypatch.setattr(examples, "usable_per_epoch", no_counting)
    for k in (11, 23):
        assert_same(full[k:k + 4], batches(cfg, tokenizer, 4, start_example=4 * k,
                                           resume_positions=running[k - 1].tolist()))


def test_filters_apply_to_sources_and_keep_resume_exact(corpus, tokenizer):
    # Captions "photo of thing N": the basic filter keeps those of at most 16 characters,
    # i.e. N < 10 in this corpus (labels are N).
    cfg = data_cfg(tfrecords(corpus))
    cfg.filters.basic.update(enabled=True, max_chars=16)
    counters = FilterCounters()
    full = batches(cfg, tokenizer, 6, filter_counters=counters)
    assert sorted(labels(full[:5])) == sorted(list(range(10)) * 2)  # 10 kept per epoch
    assert_same(full[3:], batches(cfg, tokenizer, 3, start_example=4 * 3))
    counts = counters.as_dict()
    # Prefetching reads ahead, so the counts are at least those of the two epochs served.
    assert counts["filters/basic/kept"] >= 20 and counts["filters/basic/dropped"] >= 28


def test_rendered_captions_and_text_pairs_from_a_tfrecord_source(tmp_path):
    """CLIPPO on a non-TFDS source: "text" is the rendered caption, a share of the images
    become another same-label caption of the batch, and resume stays exact."""
    captions = [f"{i} shirt" for i in range(8)]  # 4 characters a line: distinct renderings
    for s in range(2):
        write_shard(str(tmp_path / f"r-{s}.tfrecord"),
                    [(jpeg(), captions[4 * s + i], i % 2) for i in range(4)])
    cfg = data_cfg({"kind": "tfrecord", "pattern": str(tmp_path / "r-*.tfrecord")},
                   channels=1, image_size=16)
    cfg.render.update(enabled=True, font_size=8, text_pair_fraction=0.5)
    renderer = text_renderer(cfg)
    rendered = [r.tobytes() for r in renderer.encode_batch(captions)]
    assert len(set(rendered)) == 8
    full = batches(cfg, renderer, 4)  # two epochs of 8
    text = np.concatenate([b["text"] for b in full])
    assert text.shape == (16, 16, 16, 1)
    assert sorted(r.tobytes() for r in text) == sorted(rendered * 2)  # each once an epoch
    cfg.render.text_pair_fraction = 0.0
    plain = batches(cfg, renderer, 4)
    swaps = 0
    for a, b in zip(full, plain, strict=True):
        np.testing.assert_array_equal(a["text"], b["text"])
        for i in np.flatnonzero(~np.all(a["image"] == b["image"], axis=(1, 2, 3))):
            swaps += 1
            partners = [j for j in range(4) if j != i and a["label"][j] == a["label"][i]]
            assert any(np.array_equal(a["image"][i], a["text"][j]) for j in partners)
    assert swaps > 0
    cfg.render.text_pair_fraction = 0.5
    assert_same(full[2:], batches(cfg, renderer, 2, start_example=8))


def test_embedding_cache_reads_every_source_and_keeps_the_stream(corpus, tokenizer, tmp_path):
    """uid_image_batches covers every usable example of every source (tfrecord and table)
    once, in stored order; with the embeddings the stream is the same stream of examples."""
    (tmp_path / "img").mkdir()
    rows = []
    for i in range(4):
        (tmp_path / "img" / f"{i}.jpg").write_bytes(jpeg())
        rows.append({"image": f"img/{i}.jpg", "caption": f"picture {i}", "uid": f"f{i}",
                     "label": 200 + i})
    (tmp_path / "t.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = data_cfg(tfrecords(corpus), {"kind": "table", "path": str(tmp_path / "t.jsonl")})
    got = list(stream.uid_image_batches(cfg, 5))
    assert [len(b["uid"]) for b in got] == [5, 5, 5, 5, 4, 4]  # per source: 24, then 4
    assert got[0]["image"].shape == (5, 8, 8, 3) and got[0]["image"].dtype == np.float32
    uids = [u.decode() for b in got for u in b["uid"]]
    # Source by source: the shards (interleaved two at a time), then the table's rows.
    assert sorted(uids[:24]) == sorted(f"uid{i}" for i in range(24))
    assert uids[:4] == ["uid0", "uid6", "uid1", "uid7"] and uids[24:] == ["f0", "f1", "f2", "f3"]

    label_of = {u: (200 + int(u[1:]) if u.startswith("f") else int(u[3:])) for u in uids}
    table = np.array([[label_of[u], 1.0] for u in uids], np.float32)
    with_images = batches(cfg, tokenizer, 10)
    cached = batches(cfg, tokenizer, 10, image_embeddings=(np.array(uids), table))
    for a, b in zip(with_images, cached, strict=True):
        assert "image" not in b and b["image_embedding"].shape == (4, 2)
        np.testing.assert_array_equal(b["image_embedding"][:, 0], b["label"])
        for key in ("label", "text", "stream_position", "data_counts"):
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    assert {200, 201, 202, 203} & set(labels(cached))  # the folder source is in the mix
