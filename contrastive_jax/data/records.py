"""The canonical example every source yields, its TFRecord form, and bad-record reasons.

After reading, every source hands the pipeline the same structure (see `RECORD_SPEC`):
encoded image bytes, caption, uid, label (-1 if none), score (NaN if none) and `reason`,
0 for a usable record or the code of the reason it must be skipped. File-level failures
(a missing or truncated file) travel as one marker record with that reason, so every skip
is counted by the same in-graph counter as per-example failures.
"""

from __future__ import annotations

import math

import tensorflow as tf

# Reasons a record is skipped; index + 1 is its `reason` code (0 = usable).
REASONS = ("undecodable_image", "empty_caption", "non_utf8_caption", "truncated_shard",
           "missing_file")  # fmt: skip
OK = 0
UNDECODABLE, EMPTY_CAPTION, NON_UTF8, TRUNCATED, MISSING = range(1, len(REASONS) + 1)
# Counter layout: [examples served, skipped per reason...].
COUNTER_KEYS = ("data/seen",) + tuple(f"data/skipped/{r}" for r in REASONS)

RECORD_SPEC = {
    "image_bytes": tf.TensorSpec([], tf.string),
    "caption": tf.TensorSpec([], tf.string),
    "uid": tf.TensorSpec([], tf.string),
    "label": tf.TensorSpec([], tf.int32),
    "score": tf.TensorSpec([], tf.float32),
    "reason": tf.TensorSpec([], tf.int32),
}

# TFRecord features written by `data build` (and read by the tfrecord source).
FEATURES = {
    "image": tf.io.FixedLenFeature([], tf.string),
    "caption": tf.io.FixedLenFeature([], tf.string),
    "uid": tf.io.FixedLenFeature([], tf.string, default_value=""),
    "label": tf.io.FixedLenFeature([], tf.int64, default_value=-1),
    "score": tf.io.FixedLenFeature([], tf.float32, default_value=math.nan),
}


def make_record(image_bytes: bytes = b"", caption: bytes = b"", uid: bytes = b"",
                label: int = -1, score: float = math.nan, reason: int = OK) -> dict:
    """A canonical record as Python values (for generator sources)."""
    return {"image_bytes": image_bytes, "caption": caption, "uid": uid, "label": label,
            "score": score, "reason": reason}  # fmt: skip


def marker(reason: int, path: str) -> dict:
    """The one record that stands for a file-level failure (its uid names the file)."""
    return make_record(uid=path.encode(), reason=reason)


def serialize_example(image_bytes: bytes, caption: str, uid: str, label: int = -1,
                      score: float | None = None) -> bytes:
    """One tf.train.Example with the `FEATURES` layout."""

    def b(v: bytes) -> tf.train.Feature:
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=[v]))

    feature = {"image": b(image_bytes), "caption": b(caption.encode("utf-8")),
               "uid": b(uid.encode("utf-8")),
               "label": tf.train.Feature(int64_list=tf.train.Int64List(value=[int(label)]))}
    if score is not None:
        feature["score"] = tf.train.Feature(float_list=tf.train.FloatList(value=[score]))
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def parse_example(serialized: tf.Tensor, keys: dict[str, str] | None = None) -> dict:
    """Serialized tf.train.Example -> canonical record (reason OK).

    `keys` renames features (canonical name -> stored name) for shards written elsewhere.
    """
    keys = keys or {}
    spec = {keys.get(k, k): v for k, v in FEATURES.items()}
    ex = tf.io.parse_single_example(serialized, spec)
    get = lambda k: ex[keys.get(k, k)]  # noqa: E731
    return {"image_bytes": get("image"), "caption": get("caption"), "uid": get("uid"),
            "label": tf.cast(get("label"), tf.int32), "score": get("score"),
            "reason": tf.constant(OK, tf.int32)}  # fmt: skip


def check_caption(record: dict) -> dict:
    """Marks a usable record whose caption is empty or not valid UTF-8."""
    caption = record["caption"]
    # errors="strict" would raise inside tf.data; a replaced byte changes the string instead.
    fixed = tf.strings.unicode_transcode(caption, "UTF-8", "UTF-8", errors="replace",
                                         replacement_char=0xFFFD)  # fmt: skip
    utf8 = tf.equal(fixed, caption)
    empty = tf.equal(tf.strings.length(tf.strings.strip(caption)), 0)
    reason = record["reason"]
    reason = tf.where(tf.equal(reason, OK) & tf.logical_not(utf8), NON_UTF8, reason)
    reason = tf.where(tf.equal(reason, OK) & empty, EMPTY_CAPTION, reason)
    return {**record, "reason": reason}
