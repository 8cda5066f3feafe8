"""Curated-data filters: decisions on hand-built examples, exact counters, determinism."""

from __future__ import annotations

import itertools
import random

import ml_collections
import numpy as np
import pytest
import tensorflow as tf

from contrastive_jax.data import examples as source_examples
from contrastive_jax.data import positions, schema
from contrastive_jax.data.filters import (
    FilterCounters,
    apply_filters,
    default_filters_config,
    metaclip,
    uid_tables,
)
from contrastive_jax.data.stream import train_dataset
from contrastive_jax.data.tokenizer_setup import ensure_tokenizer
from contrastive_jax.datasets.uid_random import uid_uniform


def examples(rows: list[tuple[str, str, tuple[int, int]]]) -> tf.data.Dataset:
    """(uid, caption, (H, W)) rows -> a dataset of decoded single examples."""

    def gen():
        for uid, caption, (h, w) in rows:
            yield {"image": np.zeros((h, w, 1), np.uint8), "caption": caption, "uid": uid,
                   "label": np.int32(-1)}

    return tf.data.Dataset.from_generator(gen, output_signature={
        "image": tf.TensorSpec([None, None, 1], tf.uint8),
        "caption": tf.TensorSpec([], tf.string), "uid": tf.TensorSpec([], tf.string),
        "label": tf.TensorSpec([], tf.int32)})


def kept_uids(ds: tf.data.Dataset) -> list[str]:
    return [ex["uid"].decode() for ex in ds.as_numpy_iterator()]


def config(**groups) -> ml_collections.ConfigDict:
    cfg = default_filters_config()
    for name, values in groups.items():
        cfg[name].update({"enabled": True, **values})
    return cfg


def test_basic_bounds_and_exact_counters():
    rows = [
        ("ok", "a photo of a dress", (28, 28)),
        ("short", "dress", (28, 28)),  # 1 word < 2
        ("long", "one two three four five six seven", (28, 28)),  # 7 words > 6
        ("chars", "ab cd", (28, 28)),  # 5 chars < 6
        ("small", "a photo of a coat", (10, 28)),  # short side 10 < 16
        ("wide", "a photo of a bag", (20, 80)),  # aspect 4 > 3
        ("ok2", "  a tall   boot  ", (30, 60)),  # 3 words, 11 chars, aspect 2
    ]
    counters = FilterCounters()
    cfg = config(basic=dict(min_words=2, max_words=6, min_chars=6, min_image_side=16,
                            max_aspect_ratio=3.0))
    assert kept_uids(apply_filters(examples(rows), cfg, counters=counters)) == ["ok", "ok2"]
    assert counters.as_dict() == {"filters/basic/kept": 2, "filters/basic/dropped": 5}


def test_language_filter_uses_packaged_model():
    rows = [("en", "the cat is sleeping on the table in the kitchen", (28, 28)),
            ("fr", "le chat dort sur la table de la cuisine", (28, 28)),
            ("de", "die Katze schläft auf dem Tisch in der Küche", (28, 28))]
    cfg = config(basic=dict(languages=("en", "de")))
    assert kept_uids(apply_filters(examples(rows), cfg)) == ["en", "de"]


def reference_substr_matching(text: str, entries: list[str]) -> list[int]:
    """MetaCLIP's substr_matching.py, transcribed with `in` instead of Aho-Corasick."""
    spaced = f" {text} "
    for p in [",", ".", ";", ":", "?", "!", "`"]:
        spaced = spaced.replace(p, f" {p} ")
    for c in ["\t", "\n", "\r"]:
        spaced = spaced.replace(c, " ")
    return sorted({i for i, e in enumerate(entries) if f" {e} " in spaced})


def test_metaclip_matching_follows_metaclip():
    entries = ["boot", "ankle boot", "bag", "tee", "t-shirt"]
    cases = {"an ankle boot.": [0, 1], "bootie, bags": [], "a bag!": [2], "tee\tshirt": [3],
             "my t-shirt,bag": [2, 4], "Boot": [], "boot": [0]}
    matcher = metaclip.EntryMatcher(entries)
    for text, expected in cases.items():
        assert matcher.match(text) == expected == reference_substr_matching(text, entries)
    assert metaclip.EntryMatcher(entries, lowercase=True).match("Boot") == [0]


def test_metaclip_matching_equals_the_plain_scan_on_random_captions():
    # Entries with punctuation, doubled and edge spaces, an empty one and a repeat: the span
    # lookup must find exactly what MetaCLIP's `f" {e} " in text` finds, ids and all.
    entries = ["boot", "ankle boot", "bag", "t-shirt", "new york", "x . y", "a  bag", "", " ",
               "boot", "york ,", "!", "a"]
    words = ["boot", "ankle", "bag", "bags", "Boot", "t-shirt", "a", "", "x.y", "new", "york",
             ",", "!", "\t", "  "]
    rng = random.Random(1)
    matcher = metaclip.EntryMatcher(entries)
    for _ in range(2000):
        text = " ".join(rng.choice(words) for _ in range(rng.randint(0, 12)))
        if rng.random() < 0.3:
            text = text.replace(" ", "")
        assert matcher.match(text) == reference_substr_matching(text, entries), repr(text)


def reference_balancing(rows, entries: list[str], t: int, pool=None) -> list[str]:
    """Uids of `rows` MetaCLIP's balancing.py keeps, counting over `pool` (default: `rows`),
    with random.random() replaced by uid_uniform(uid, entry)."""
    counts = np.zeros(len(entries), np.uint64)
    for _, caption, _ in rows if pool is None else pool:
        for e in reference_substr_matching(caption, entries):
            counts[e] += 1
    counts[counts < t] = t
    prob = t / counts
    return [uid for uid, caption, _ in rows
            if any(uid_uniform(uid, e) < prob[e]
                   for e in reference_substr_matching(caption, entries))]


def metaclip_rows(n: int = 300) -> list[tuple[str, str, tuple[int, int]]]:
    rng = random.Random(0)
    words = ["coat", "dress", "bag", "hat"]
    return [(f"u{i:03d}", " and ".join(rng.sample(words, rng.randint(1, 2))), (28, 28))
            for i in range(n)]


def test_metaclip_balancing_matches_reference_and_is_order_free(tmp_path):
    entries, rows, t = ["coat", "dress", "bag"], metaclip_rows(), 40
    expected = reference_balancing(rows, entries, t)
    assert 0 < len(expected) < len(rows)

    counts_path = str(tmp_path / "counts.json")
    cfg = config(metaclip=dict(entries_file=_write(tmp_path / "e.txt", entries), t=t,
                               counts_path=counts_path))
    counters = FilterCounters()
    assert kept_uids(apply_filters(examples(rows), cfg, counters=counters)) == expected
    assert counters.as_dict() == {"filters/metaclip/kept": len(expected),
                                  "filters/metaclip/dropped": len(rows) - len(expected)}
    # The counts file was written once and is reused; a reversed order keeps the same set.
    assert metaclip.load_counts(counts_path, entries).tolist() == [
        sum(entries[e] in c for _, c, _ in rows) for e in range(3)]
    reversed_ds = apply_filters(examples(rows[::-1]), cfg)
    assert sorted(kept_uids(reversed_ds)) == sorted(expected)


@pytest.fixture(scope="module")
def tokenizer(fake_data_dir, tmp_path_factory):
    cfg = schema.default_data_config()
    cfg.update(data_dir=fake_data_dir)
    cfg.tokenizer.vocab_size = 300
    return ensure_tokenizer(cfg, str(tmp_path_factory.mktemp("tokenizer")))


def test_metaclip_counts_the_whole_train_split_in_every_process(fake_data_dir, tokenizer,
                                                                 tmp_path):
    # Process 1 of 2 trains on half the split, but must balance with the whole split's counts
    # (with its half's, each of P processes would keep ~P times as many examples of a common
    # entry as `t` allows) and so with the same counts as every other process.
    cfg = schema.default_data_config()
    cfg.update(data_dir=fake_data_dir, shuffle_buffer=64)
    counts = {}
    for process_index, process_count in [(0, 1), (1, 2)]:
        path = str(tmp_path / f"counts_{process_index}_of_{process_count}.json")
        cfg.filters.metaclip.update(enabled=True, t=5, counts_path=path)
        ds = train_dataset(cfg, tokenizer, global_batch_size=16,
                           process_index=process_index, process_count=process_count)
        next(ds.as_numpy_iterator())  # building it ran the counting pass
        entries = metaclip.dataset_entries(cfg.dataset)
        counts[process_count] = metaclip.load_counts(path, entries)
    assert counts[1].sum() > 100  # the entries do occur in the fake captions
    np.testing.assert_array_equal(counts[2], counts[1])


def _write(path, lines) -> str:
    path.write_text("".join(f"{x}\n" for x in lines))
    return str(path)


def test_score_file_round_trip_threshold_and_top_fraction(tmp_path):
    uids = [f"u{i}" for i in range(10)]
    scores = np.linspace(-0.5, 0.4, 10).astype(np.float32)  # u9 best
    path = str(tmp_path / "scores.npz")
    uid_tables.write_scores(path, uids, scores)
    read_uids, read_scores = uid_tables.read_scores(path)
    assert read_uids.tolist() == uids and np.array_equal(read_scores, scores)
    rows = [(u, "x", (28, 28)) for u in [*uids, "unscored"]]

    by_fraction = config(score=dict(path=path, top_fraction=0.3))
    counters = FilterCounters()
    kept = kept_uids(apply_filters(examples(rows), by_fraction, counters=counters))
    assert kept == ["u7", "u8", "u9"]
    assert counters.as_dict() == {"filters/score/kept": 3, "filters/score/dropped": 8}
    by_threshold = config(score=dict(path=path, threshold=0.05))
    assert kept_uids(apply_filters(examples(rows), by_threshold)) == ["u6", "u7", "u8", "u9"]
    with pytest.raises(ValueError, match="exactly one"):
        apply_filters(examples(rows), config(score=dict(path=path)))
    with pytest.raises(ValueError, match="unique"):
        uid_tables.write_scores(path, ["a", "a"], [0.0, 1.0])


def test_keep_lists_intersect_and_filters_compose_in_order(tmp_path):
    rows = [(f"u{i}", "a photo of a coat" if i % 2 else "coat", (28, 28)) for i in range(8)]
    a = _write(tmp_path / "a.txt", ["u0", "u1", "u2", "u3", "u5"])
    b = _write(tmp_path / "b.txt", ["u1", "u2", "u3", "u5", "u7"])
    counters = FilterCounters()
    cfg = config(dedup=dict(keep_lists=(a, b)), basic=dict(min_words=2))
    cfg.order = ("dedup", "basic", "score", "metaclip")
    assert kept_uids(apply_filters(examples(rows), cfg, counters=counters)) == ["u1", "u3", "u5"]
    assert counters.as_dict() == {"filters/dedup/kept": 4, "filters/dedup/dropped": 4,
                                  "filters/basic/kept": 3, "filters/basic/dropped": 1}
    cfg.order = ("basic",)
    with pytest.raises(ValueError, match="lacks enabled"):
        apply_filters(examples(rows), cfg)


EXCLUDED = {f"train/{i:06d}" for i in range(0, 200, 20)}  # not on the keep-list


@pytest.fixture(scope="module")
def filtered_cfg(fake_data_dir, tmp_path_factory):
    cfg = schema.default_data_config()
    cfg.data_dir = fake_data_dir
    cfg.shuffle_buffer = 64
    cfg.logical_streams = 1  # the test reads the stream's own positions
    # Keep roughly half the train split by a score file (uid hash as a stand-in score),
    # after a keep-list that drops 10 uids.
    uids = [f"train/{i:06d}" for i in range(200)]
    folder = tmp_path_factory.mktemp("filter_tables")
    uid_tables.write_scores(str(folder / "s.npz"), uids, [uid_uniform(u) for u in uids])
    cfg.filters.score.update(enabled=True, path=str(folder / "s.npz"), threshold=0.5)
    keep = _write(folder / "keep.txt", [u for u in uids if u not in EXCLUDED])
    cfg.filters.dedup.update(enabled=True, keep_lists=(keep,))
    return cfg


def test_stream_applies_filters_counts_them_and_resumes_exactly(filtered_cfg, tokenizer,
                                                                monkeypatch):
    uids = [f"train/{i:06d}" for i in range(200)]
    n_kept = sum(u not in EXCLUDED and uid_uniform(u) >= 0.5 for u in uids)
    counters = FilterCounters()
    bs, n = 16, 14  # > 1 epoch of the kept examples
    ds = train_dataset(filtered_cfg, tokenizer, global_batch_size=bs, seed=1,
                       filter_counters=counters)
    full = list(itertools.islice(ds.as_numpy_iterator(), n))
    first_epoch = np.concatenate([b["image"] for b in full]).reshape(n * bs, -1)[:n_kept]
    assert len({row.tobytes() for row in first_epoch}) == n_kept  # each kept example once
    got = counters.as_dict()
    assert got["filters/dedup/dropped"] >= len(EXCLUDED)
    assert got["filters/score/kept"] >= n_kept
    # Read ahead still runs: a dedup-kept example may not have reached the score filter yet.
    assert got["filters/score/kept"] + got["filters/score/dropped"] <= got["filters/dedup/kept"]
    # Positions count raw records: epoch 1 is 200 records, of which n_kept are served.
    running = np.maximum.accumulate(np.stack([b["stream_position"][0] for b in full]))
    k = 9  # resume inside the second epoch: by counting, then from the saved position
    assert positions.decode(running[k - 1])[0] == 1
    for saved in (None, running[k - 1 : k].tolist()):
        if saved:
            monkeypatch.setattr(source_examples, "usable_per_epoch", _no_counting)
        resumed = train_dataset(filtered_cfg, tokenizer, global_batch_size=bs, seed=1,
                                start_example=k * bs, resume_positions=saved)
        for a, b in zip(full[k:], resumed.as_numpy_iterator(), strict=False):
            np.testing.assert_array_equal(a["image"], b["image"])
            np.testing.assert_array_equal(a["text"], b["text"])


def _no_counting(*args, **kwargs):
    raise AssertionError("a resume with saved positions counted an epoch")


def test_noisy_corpus_shuffles_a_known_fraction_of_train_captions():
    from contrastive_jax.datasets.fashion_mnist_noisy import shuffled_sources

    n = 4000
    source = shuffled_sources("train", n, fraction=0.3)
    assert sorted(source.tolist()) == list(range(n))  # a permutation: every caption used once
    moved = source != np.arange(n)
    chosen = [uid_uniform(f"train/{i:06d}", "shuffle") < 0.3 for i in range(n)]
    assert not np.any(moved & ~np.array(chosen))  # only chosen examples trade captions
    assert 0.27 < moved.mean() < 0.33
    assert np.array_equal(shuffled_sources("test", 50), np.arange(50))


def test_bad_filter_config_is_a_one_line_config_error():
    from contrastive_jax.config import default_config, validate
    from contrastive_jax.errors import ConfigError

    for key, value in [("score.enabled", True), ("basic.min_words", -1),
                       ("order", ("basic", "nope"))]:
        config = default_config()
        group, _, leaf = key.rpartition(".")
        node = config.data.filters[group] if group else config.data.filters
        node[leaf] = value
        if key == "basic.min_words":
            config.data.filters.basic.enabled = True
        with pytest.raises(ConfigError, match="data.filters"):
            validate(config)
