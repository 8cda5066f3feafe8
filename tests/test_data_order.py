"""The topology-invariant example order (data/order.py): the global batches of 1, 2 and 4
processes are the same, row for row, and a stream saved by one process count resumes
exactly on another; by default too, where sources with fewer files than the 64 logical
streams share their files out (data/units.py)."""

from __future__ import annotations

import itertools
import json

import ml_collections
import numpy as np
import pytest
from test_data_sources import jpeg, tokenizer, write_shard, write_tar

from contrastive_jax.data import order, schema, stream
from contrastive_jax.errors import ConfigError, DataError
from contrastive_jax.train.stream_progress import logical_streams

__all__ = ["tokenizer"]  # a fixture used here

STREAMS, BATCH = 4, 8
KEYS = ("image", "text", "label", "data_counts", "stream_position")


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """Source a: 8 shards x 4 examples (labels 0..31; the basic filter drops those with
    label % 4 == 2); source b: 4 x 3 (labels 100..111)."""
    d = tmp_path_factory.mktemp("order")
    for s in range(8):
        write_shard(str(d / f"a-{s}.tfrecord"),  # i = 2: 8 words, for the filter
                    [(jpeg(), f"photo of thing {4 * s + i}" + " a b" * (i % 3), 4 * s + i)
                     for i in range(4)])  # fmt: skip
    for s in range(4):
        write_shard(str(d / f"b-{s}.tfrecord"),
                    [(jpeg(), f"picture {i} c", 100 + 3 * s + i) for i in range(3)])
    return d


def config(shards, **overrides):
    cfg = schema.default_data_config()
    cfg.sources = ({"kind": "tfrecord", "pattern": str(shards / "a-*.tfrecord"), "weight": 3},
                   {"kind": "tfrecord", "pattern": str(shards / "b-*.tfrecord")})
    # The run's shuffle buffer, shared out: 3 records in each of the 4 streams' buffers.
    cfg.image_size, cfg.max_len, cfg.shuffle_buffer, cfg.cycle_length = 8, 8, 3 * STREAMS, 2
    cfg.filters.basic.update(enabled=True, max_words=7)  # drops i % 3 == 2 of source a
    # Augmentations keyed by (stream, position), not by process (the other image ops take
    # the flip's key).
    cfg.flip, cfg.augment.word_deletion = True, 0.2
    cfg.logical_streams = STREAMS
    for key, value in overrides.items():
        cfg[key] = value
    return cfg


def global_batches(cfg, tok, processes: int, n: int, batch: int = BATCH,
                   **kw) -> list[dict[str, np.ndarray]]:
    """n global batches as `processes` processes feed them: each process's rows, in
    process order (the layout of the global jax.Array)."""
    parts = [itertools.islice(stream.train_dataset(
        cfg, tok, global_batch_size=batch, process_index=p, process_count=processes, seed=5,
        **{k: v[p] if isinstance(v, list) else v for k, v in kw.items()}).as_numpy_iterator(), n)
        for p in range(processes)]  # fmt: skip
    steps = zip(*parts, strict=True)
    return [{k: np.concatenate([b[k] for b in step]) for k in KEYS} for step in steps]


def assert_same(a, b, keys=KEYS):
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        for key in keys:
            np.testing.assert_array_equal(x[key], y[key], err_msg=key)


@pytest.fixture(scope="module")
def one_process(shards, tokenizer):
    """6 global batches of `config(shards)` read by one process, uninterrupted."""
    return global_batches(config(shards), tokenizer, 1, 6)


def test_batches_are_the_same_on_every_process_count_and_resume_on_another(shards,
                                                                          tokenizer,
                                                                          one_process):
    """One process uninterrupted; then 2 processes from the start, resumed on 4 and on 1
    from the positions the run saved: the same global batches."""
    cfg, full = config(shards), one_process
    at = 0
    for stop, processes, saved in ((2, 2, False), (4, 4, True), (6, 1, True)):
        kw = {"start_example": BATCH * at}
        if saved:  # what a checkpoint saves: the running maximum, [L * S] in stream order
            positions = np.max([b["stream_position"] for b in full[:at]], axis=0)
            kw["resume_positions"] = [r.tolist() for r in np.split(positions, processes)]
        part = global_batches(cfg, tokenizer, processes, stop - at, **kw)
        # Counters start again from zero at a resume; everything else is the same.
        assert_same(part, full[at:stop], keys=KEYS if not at else KEYS[:-2] + KEYS[-1:])
        at = stop
    # Row r of batch n is stream r // 2's example 2n + r % 2: each stream reads its files.
    labels = np.stack([b["label"] for b in full])  # [batch, row]
    for s in range(STREAMS):
        rows = labels[:, 2 * s : 2 * s + 2].ravel()
        assert all(x >= 100 or (x // 4) % STREAMS == s for x in rows)  # files[s::4]
    assert order.row_source(5, 3, BATCH, STREAMS) == (2, 7)
    assert {x >= 100 for x in labels.ravel()} == {False, True}  # both sources are read
    assert not any(x < 100 and x % 4 == 2 for x in labels.ravel())  # and filtered


def test_debiased_batches_stay_whole_draws_on_every_process_count(shards, tokenizer):
    cfg = config(shards, debiased_sampling=True, logical_streams=2, flip=False)
    cfg.augment.word_deletion = 0.0
    one = global_batches(cfg, tokenizer, 1, 8)
    assert_same(global_batches(cfg, tokenizer, 2, 8), one)
    assert all(len({x >= 100 for x in b["label"]}) == 1 for b in one)
    assert {x >= 100 for b in one for x in b["label"]} == {False, True}


@pytest.fixture(scope="module")
def few_files(tmp_path_factory):
    """Fewer files than 64 logical streams: one TFRecord file of 128 examples (labels
    0..127), three wds tars of 48 (labels 1000..1143), a table of 40 rows."""
    d = tmp_path_factory.mktemp("few")
    write_shard(str(d / "one.tfrecord"), [(jpeg(), f"photo of thing {i}", i) for i in range(128)])
    for f in range(3):
        write_tar(str(d / f"w-{f}.tar"), [
            (f"k{i:03d}", {"jpg": jpeg(), "txt": f"picture {i}".encode(),
                           "json": json.dumps({"label": 1000 + 48 * f + i}).encode()})
            for i in range(48)])  # fmt: skip
    (d / "t.csv").write_text("image,caption\n" + "".join(f"x{i}.jpg,c {i}\n" for i in range(40)))
    return d


def test_the_default_order_is_the_same_on_every_process_count(few_files, tokenizer):
    """data.logical_streams 0: 64 streams for a batch of 64. One TFRecord file (stream s
    reads its records s, s + 64) mixed with three tars (each shared by 21 or 22 streams).
    1 and 4 processes: every count in between is the first test's (1, 2 and 4)."""
    cfg = config(few_files)
    cfg.sources = ({"kind": "tfrecord", "pattern": str(few_files / "one.tfrecord")},
                   {"kind": "webdataset", "pattern": str(few_files / "w-*.tar")})
    cfg.filters.basic.enabled, cfg.logical_streams = False, 0
    one = global_batches(cfg, tokenizer, 1, 2, batch=64)
    assert_same(global_batches(cfg, tokenizer, 4, 2, batch=64), one)
    assert one[0]["stream_position"].shape == (64 * 2,)  # 64 streams of two sources
    ids = np.concatenate([b["label"] for b in one])
    assert len(set(ids)) == 128  # no example twice
    assert all(x % 64 == r for b in one for r, x in enumerate(b["label"]) if x < 1000)
    assert {(x - 1000) // 48 for x in ids if x >= 1000} == {0, 1, 2}  # every tar is read


def test_a_source_that_cannot_be_split_says_so(few_files, tokenizer):
    cfg = config(few_files)
    cfg.sources = ({"kind": "table", "path": str(few_files / "t.csv")},)
    cfg.filters.basic.enabled, cfg.logical_streams = False, 0
    with pytest.raises(DataError, match=r"^table .*t.csv: its table's rows \(a table is split "
                                        r"by rows, no further\) cannot feed 64 logical streams "
                                        r"\('data.logical_streams'; stream 40 would read "
                                        r"nothing\): set it to at most 40$"):
        stream.train_dataset(cfg, tokenizer, global_batch_size=64)
    # A stream whose only file is missing would spin forever: named at the start.
    cfg.sources = ({"kind": "tfrecord",
                    "pattern": [str(few_files / "one.tfrecord"), str(few_files / "gone")]},)
    with pytest.raises(DataError, match=r"^tfrecord .*: no usable example for logical stream "
                                        r"0 of 8 \(its units are missing or bad"):
        stream.train_dataset(cfg, tokenizer, global_batch_size=8)


def test_the_shuffle_buffer_is_shared_out_over_the_streams(shards, tokenizer, one_process):
    """`data.shuffle_buffer` is the run's, whatever the process count: each of L streams
    shuffles through ceil(buffer / L) records, so one process of P holds about buffer / P
    (not L buffers); the order is the same on every process count (the test above)."""
    assert order.stream_shuffle_buffer(10_000, 64) == 157  # 64 x 157: one host, ~10,000
    assert order.stream_shuffle_buffer(10, 4) == 3 and order.stream_shuffle_buffer(3, 64) == 1
    # A buffer with the same share per stream (10 and 12: 3 each) reads the same batches;
    # another share (1 each: no shuffle) does not.
    full = one_process[:2]
    assert_same(global_batches(config(shards, shuffle_buffer=10), tokenizer, 1, 2), full)
    other = global_batches(config(shards, shuffle_buffer=STREAMS), tokenizer, 1, 2)
    assert any((a["label"] != b["label"]).any() for a, b in zip(other, full, strict=True))


def test_counts_that_cannot_continue_are_refused_in_one_line(shards, tokenizer, monkeypatch):
    assert order.working_counts(12) == [1, 2, 3, 4, 6, 12]
    with pytest.raises(ConfigError, match=r"^3 processes cannot continue this run's data "
                       r"order exactly: its 4 logical streams \('data.logical_streams'\) "
                       r"split over 1, 2, 4 processes only$"):
        stream.train_dataset(config(shards), tokenizer, global_batch_size=12, process_count=3)
    with pytest.raises(ConfigError, match=r"global batch \(6\) must split evenly over the 4"):
        stream.train_dataset(config(shards), tokenizer, global_batch_size=6)
    run = schema.default_data_config()
    meta = {"stream": {"examples_read": 64, "logical_streams": 4, "positions": [[1, 2]] * 4}}
    train = {"batch_size": 256, "cit": {"enabled": False, "oversample": 4}}
    cfg = ml_collections.ConfigDict({"data": run, "train": train})
    assert logical_streams(meta, 8, cfg) == 4  # the checkpoint's, on 1 process
    assert logical_streams({}, 0, cfg) == 64  # the default
    cfg.train.batch_size = 48
    assert logical_streams({}, 0, cfg) == 16  # the largest power of two dividing it
    run.logical_streams = 8
    assert logical_streams({}, 0, cfg) == 8
    with pytest.raises(ConfigError, match="orders its data in 4 logical streams; resume it "
                                          "with 'data.logical_streams=4'"):
        logical_streams(meta, 8, cfg)
    # Checkpoints from before logical streams: one stream per process that wrote them.
    run.logical_streams = 0
    assert logical_streams({"stream": {"positions": [[1], [2]]}}, 8, cfg) == 2
    monkeypatch.setattr("jax.process_count", lambda: 3)
    with pytest.raises(ConfigError, match="^3 processes cannot continue"):
        logical_streams(meta, 8, cfg)
    assert logical_streams({}, 0, cfg) == 48  # 3 does not divide 16: gcd(48, 64 * 3)
    assert logical_streams({"stream": {"examples_read": 48}}, 1, cfg) == 3  # the oldest
