"""Pure-Python readers of two on-disk forms: webdataset tar shards and (path, caption) tables.

Both yield canonical records (`records.make_record`) and turn failures into marker records
(truncated shard, missing file) instead of raising, so the caller counts them.

webdataset conventions (as in webdataset's `tariterators.base_plus_ext` and open_clip):
a sample's key is the member path up to the FIRST dot of its basename, the rest is its
extension (lowercased); consecutive members with one key form one sample; `.txt` holds
the caption, `.json` metadata (and the caption under "caption"/"text" when there is no
`.txt`), and the image is the `.jpg`/`.jpeg`/`.png`/`.webp` member.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import math
import re
import tarfile
from collections.abc import Iterable, Iterator
from typing import Any

from contrastive_jax import paths
from contrastive_jax.data import records, tfrecord_io
from contrastive_jax.errors import DataError, InputNotFoundError

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")
_KEY_RE = re.compile(r"^((?:.*/|)[^./]+)[.]([^/]*)$")


def split_key(name: str) -> tuple[str, str] | None:
    """('dir/key', 'ext') of a tar member name, or None if the basename has no extension."""
    match = _KEY_RE.match(name)
    return (match.group(1), match.group(2).lower()) if match else None


def stable_uid(source: str, key: str) -> str:
    """A uid that depends only on the source's file name and the sample's key."""
    return hashlib.sha1(f"{paths.basename(source)}/{key}".encode()).hexdigest()


def _sample(tar_path: str, key: str, files: dict[str, bytes]) -> dict:
    meta = {}
    if "json" in files:
        try:
            meta = json.loads(files["json"])
        except (ValueError, UnicodeDecodeError):
            meta = {}  # unreadable metadata: the caption check decides the record's fate
        if not isinstance(meta, dict):
            meta = {}
    caption = files.get("txt")
    if caption is None:
        text = meta.get("caption", meta.get("text", ""))
        caption = text.encode("utf-8", "surrogateescape") if isinstance(text, str) else b""
    image = next((files[e] for e in IMAGE_EXTENSIONS if e in files), b"")
    uid = str(meta.get("uid", "")) or stable_uid(tar_path, key)
    score = meta.get("score")
    label = meta.get("label")
    return records.make_record(
        image_bytes=image, caption=caption, uid=uid.encode(),
        label=int(label) if isinstance(label, int) else -1,
        score=float(score) if isinstance(score, (int, float)) else math.nan)  # fmt: skip


def read_tar(path: str, stride: int = 1, offset: int = 0) -> Iterator[dict]:
    """Samples of one webdataset tar shard in stored order; markers for failures. With
    `stride` > 1, only samples number offset, offset + stride, ... (a logical stream's
    part of a shard shared by several, data/order.py); part 0 reports the failures."""
    if not paths.exists(path):
        log.warning("missing shard %s: skipped (counted as missing_file)", path)
        if not offset:
            yield records.marker(records.MISSING, path)
        return
    key, files, index = None, {}, 0
    try:
        # Streaming: no seeks, reads once (an object-store file reads ahead in blocks).
        with paths.open_file(path, "rb") as raw, tarfile.open(fileobj=raw, mode="r|*") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                parts = split_key(member.name)
                if parts is None:
                    continue
                if parts[0] != key:
                    if key is not None:
                        if index % stride == offset:
                            yield _sample(path, key, files)
                        index += 1
                    key, files = parts[0], {}
                if index % stride == offset:  # others' samples: read past, not kept
                    files[parts[1]] = tar.extractfile(member).read()
    except (tarfile.TarError, *paths.read_errors()) as e:
        # The sample being read when the damage hit is incomplete: not served. A read that
        # failed past the client's bounded retries (gs://) counts the same.
        if not offset:
            log.warning("truncated or damaged shard %s (%s): kept the samples before the "
                        "damage", path, e)  # fmt: skip
            yield records.marker(records.TRUNCATED, path)
        return
    if key is not None and index % stride == offset:
        yield _sample(path, key, files)


def read_tfrecord(path: str, stride: int = 1, offset: int = 0
                  ) -> Iterator[tuple[bytes, int]]:
    """(serialized example, reason) of one TFRecord file; a truncated tail becomes a marker.
    With `stride` > 1, only records number offset, offset + stride, ... (as `read_tar`)."""
    import tensorflow as tf

    if not paths.exists(path):
        log.warning("missing shard %s: skipped (counted as missing_file)", path)
        if not offset:
            yield path.encode(), records.MISSING
        return
    # TensorFlow's reader for local files; on an object store our own (TF's GCS client is
    # not the project's, see paths.py), which reads the same framing and checksums.
    reader = (tfrecord_io.iterate(path) if paths.is_url(path)
              else tf.compat.v1.io.tf_record_iterator(path))
    try:
        for index, serialized in enumerate(reader):
            if index % stride == offset:
                yield serialized, records.OK
    except (tf.errors.DataLossError, tfrecord_io.DataLoss, *paths.read_errors()) as e:
        if not offset:
            log.warning("truncated shard %s (%s): kept the records before the damage", path,
                        str(e).splitlines()[0])  # fmt: skip
            yield path.encode(), records.TRUNCATED


def read_table(path: str, image_column: str = "image", caption_column: str = "caption",
               uid_column: str = "uid") -> list[dict]:
    """Rows of a CSV (with header) or JSONL file as dicts with str image path and bytes caption.

    Captions keep their original bytes (surrogateescape), so a non-UTF-8 caption reaches
    the pipeline's caption check instead of failing here.
    """
    if not paths.isfile(path):
        raise InputNotFoundError(f"table file not found: {path}")
    try:
        return _table_rows(path, image_column, caption_column, uid_column)
    except csv.Error as e:  # a NUL byte, an unterminated quote at the end, a huge field
        raise DataError(f"table {path} is damaged: {e}") from e


def _table_rows(path: str, image_column: str, caption_column: str,
                uid_column: str) -> list[dict]:
    rows = []
    with paths.open_file(path, "r", encoding="utf-8", errors="surrogateescape",
                         newline="") as f:
        if path.endswith((".jsonl", ".json")):
            items = _json_lines(path, f)
        elif path.endswith((".csv", ".tsv")):
            items = csv.DictReader(f, delimiter="\t" if path.endswith(".tsv") else ",")
        else:
            raise DataError(f"table {path}: expected a .csv, .tsv or .jsonl file")
        for i, item in enumerate(items):
            if not isinstance(item, dict) or image_column not in item or (
                    caption_column not in item):
                raise DataError(f"table {path} row {i}: needs columns {image_column!r} and "
                                f"{caption_column!r}, has "
                                f"{sorted(item) if isinstance(item, dict) else item!r}")
            label = item.get("label")
            score = item.get("score")
            try:
                label = int(label) if label not in (None, "") else -1
                score = float(score) if score not in (None, "") else math.nan
            except (TypeError, ValueError) as e:  # int() / float() of the row's own text
                raise DataError(f"table {path} row {i}: label {label!r} or score {score!r} "
                                "is not a number") from e
            rows.append({
                "image": str(item[image_column]),
                "caption": str(item[caption_column]).encode("utf-8", "surrogateescape"),
                "uid": str(item.get(uid_column) or "") or stable_uid(path, str(i)),
                "label": label,
                "score": score,
            })
    return rows


def _json_lines(path: str, lines: Iterable[str]) -> Iterator[Any]:
    for number, line in enumerate(lines, 1):
        if line.strip():
            try:
                yield json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"table {path} line {number} is not JSON: {e}") from e


def resolve(root: str, image: str) -> str:
    """An image path of a table row, relative to `root` unless absolute."""
    return image if paths.is_absolute(image) else paths.join(root, image)
