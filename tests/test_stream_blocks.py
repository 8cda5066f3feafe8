"""The block-wise check of records stored decoded equals the per-record path exactly."""

import numpy as np
import tensorflow as tf

from contrastive_jax.config import default_config
from contrastive_jax.data import examples, positions, records


def _records(n: int) -> tf.data.Dataset:
    rng = np.random.default_rng(0)
    captions = [b"a shirt", b"  ", b"\xff\xfe bad", b"a bag", b""] * (n // 5)
    data = {"image": rng.integers(0, 255, (n, 4, 4, 1), dtype=np.uint8),
            "caption": captions, "uid": [f"u{i}".encode() for i in range(n)],
            "label": np.arange(n, dtype=np.int32), "score": np.full(n, np.nan, np.float32),
            "reason": np.zeros(n, np.int32)}
    return tf.data.Dataset.zip((tf.data.Dataset.from_tensor_slices(data),
                                positions.of_epoch(tf.constant(0, tf.int64))))


def _as_lists(ds: tf.data.Dataset) -> list[dict]:
    return list(ds.as_numpy_iterator())


def test_blocks_keep_the_same_examples_counts_and_positions(monkeypatch):
    cfg = default_config().data
    n = 600  # more than two blocks, the last one partial
    blocked = _as_lists(examples.usable(_records(n), cfg))
    monkeypatch.setattr(examples, "_stored_decoded", lambda ds: False)
    per_record = _as_lists(examples.usable(_records(n), cfg))
    assert len(blocked) == len(per_record) == 2 * n // 5
    for a, b in zip(blocked, per_record, strict=True):
        assert a.keys() == b.keys()
        for key in a:
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    last = blocked[-1]["counts"]
    names = dict(zip(records.COUNTER_KEYS, last, strict=True))
    # The last usable record is the 599th; the two empty captions and the bad one per five.
    assert names["data/skipped/empty_caption"] == 2 * (n // 5) - 1
    assert names["data/skipped/non_utf8_caption"] == n // 5
