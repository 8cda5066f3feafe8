"""`contrastive-jax data build`: folder + CSV/JSONL, or webdataset tars -> TFRecord shards.

Output: `OUT/{prefix}-{i:05d}-of-{n:05d}.tfrecord` (tf.train.Example with image, caption,
uid, label, score; see `records.FEATURES`) and `OUT/{prefix}.manifest.json`. Shard i holds
table rows [i*k, (i+1)*k) for a table (k = examples per shard) or the samples of the i-th
sorted tar, so a shard's content depends only on the input. Each shard is written
all-or-nothing (locally a temporary file renamed; on gs:// an upload whose object appears
only when complete), then recorded in the manifest, which is written after it: a rerun
after an interruption keeps the finished shards and rewrites the rest. Bad records are
skipped and counted per reason in the manifest; uids are stable (a uid column, or sha1 of
file name and key).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterator
from typing import Any

import tqdm

from contrastive_jax import paths
from contrastive_jax.data import formats, records, tfrecord_io
from contrastive_jax.errors import ConfigError, DataError, InputNotFoundError
from contrastive_jax.json_files import read_json


class BuildError(DataError):
    """The output directory holds another build (one-line message)."""


def _image_ok(data: bytes) -> bool:
    import tensorflow as tf

    try:
        tf.io.decode_image(data, expand_animations=False)
        return True
    except (tf.errors.InvalidArgumentError, tf.errors.UnknownError):
        return False


def _reason(record: dict, verify_images: bool) -> int:
    """The record's skip reason (records.OK if it is usable)."""
    if record["reason"] != records.OK:
        return record["reason"]
    caption = record["caption"]
    try:
        text = caption.decode("utf-8")
    except UnicodeDecodeError:
        return records.NON_UTF8
    if not text.strip():
        return records.EMPTY_CAPTION
    if not record["image_bytes"] or (verify_images and not _image_ok(record["image_bytes"])):
        return records.UNDECODABLE
    return records.OK


def _table_shards(path: str, root: str, per_shard: int) -> list[Callable[[], Iterator[dict]]]:
    rows = formats.read_table(path)
    root = root or paths.dirname(paths.absolute(path))

    def shard(part: list[dict]) -> Callable[[], Iterator[dict]]:
        def read() -> Iterator[dict]:
            for row in part:
                image_path = formats.resolve(root, row["image"])
                try:
                    data = paths.read_bytes(image_path)
                except paths.read_errors():
                    yield records.marker(records.MISSING, image_path)
                    continue
                yield records.make_record(data, row["caption"], row["uid"].encode(),
                                          row["label"], row["score"])  # fmt: skip

        return read

    n = max(1, math.ceil(len(rows) / per_shard))
    return [shard(rows[i * per_shard : (i + 1) * per_shard]) for i in range(n)]


def _tar_shards(pattern: str) -> list[Callable[[], Iterator[dict]]]:
    paths.check_reachable(pattern, "--input")
    files = paths.glob(paths.join(pattern, "*.tar") if paths.isdir(pattern) else pattern)
    if not files:
        raise InputNotFoundError(f"--input: no tar shard matches {pattern!r}")
    return [lambda f=f: formats.read_tar(f) for f in files]


def _write_json(path: str, obj: dict) -> None:
    paths.write_text(path, json.dumps(obj, indent=1, sort_keys=True))


def build(input_path: str, out_dir: str, *, prefix: str = "data", examples_per_shard: int = 10_000,
          root: str = "", verify_images: bool = True, progress: bool = True) -> dict[str, Any]:
    """Converts `input_path` (a .csv/.tsv/.jsonl table, or tar file(s)/glob/dir) to shards."""
    if examples_per_shard < 1:
        raise ConfigError("--examples-per-shard must be >= 1")
    is_table = input_path.endswith((".csv", ".tsv", ".jsonl", ".json"))
    if is_table:
        shards = _table_shards(input_path, root, examples_per_shard)
    else:
        shards = _tar_shards(input_path)
    n = len(shards)
    paths.check_reachable(out_dir, "--out")
    paths.makedirs(out_dir)
    manifest_path = paths.join(out_dir, f"{prefix}.manifest.json")
    identity = {"input": paths.absolute(input_path), "num_shards": n,
                "examples_per_shard": examples_per_shard if is_table else None}  # fmt: skip
    manifest = {**identity, "shards": {}}
    if paths.exists(manifest_path):
        previous = read_json(manifest_path, "build manifest")
        if {k: previous.get(k) for k in identity} != identity:
            raise BuildError(f"{manifest_path} records a build of another input or layout; "
                             f"use a new output directory")
        manifest = previous
    names = [f"{prefix}-{i:05d}-of-{n:05d}.tfrecord" for i in range(n)]
    done = {name for name in manifest["shards"] if paths.exists(paths.join(out_dir, name))}
    bar = tqdm.tqdm(total=n, initial=len(done), unit="shard", disable=not progress)
    for name, read in zip(names, shards, strict=True):
        if name in done:
            continue
        skipped = dict.fromkeys(records.REASONS, 0)
        written = 0
        with paths.atomic_writer(paths.join(out_dir, name)) as writer:
            for record in read():
                reason = _reason(record, verify_images)
                if reason != records.OK:
                    skipped[records.REASONS[reason - 1]] += 1
                    continue
                writer.write(tfrecord_io.encode(records.serialize_example(
                    record["image_bytes"], record["caption"].decode("utf-8"),
                    record["uid"].decode("utf-8"), record["label"],
                    None if math.isnan(record["score"]) else record["score"])))  # fmt: skip
                written += 1
        manifest["shards"][name] = {"examples": written, "skipped": skipped}
        _write_json(manifest_path, manifest)
        bar.update(1)
        bar.set_postfix(examples=sum(s["examples"] for s in manifest["shards"].values()))
    bar.close()
    totals = dict.fromkeys(records.REASONS, 0)
    for info in manifest["shards"].values():
        for reason, count in info["skipped"].items():
            totals[reason] += count
    return {"out": paths.join(out_dir, f"{prefix}-*-of-{n:05d}.tfrecord"), "shards": n,
            "examples": sum(s["examples"] for s in manifest["shards"].values()),
            "skipped": totals, "resumed_shards": len(done)}  # fmt: skip
