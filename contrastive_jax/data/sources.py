"""Data sources: tfds, tfrecord, webdataset (tar shards), table (CSV/TSV/JSONL + images).

A source is configured as a dict, e.g.
    {"kind": "tfrecord", "pattern": "/data/laion/*.tfrecord", "weight": 0.7}
and read as canonical records (see `records`). A run without `data.sources` reads
`data.dataset` as a one-source mixture of kind `tfds` (`source_specs`). Every source
splits its units (files, table rows for `table`, file instructions of split parts for
`tfds`) between the logical streams (data/units.py), so that each stream reads a disjoint
part, and reads its units in an order given to `read`, so the stream can reshuffle them
per epoch.
"""

from __future__ import annotations

import abc
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import ml_collections
import numpy as np
import tensorflow as tf

from contrastive_jax import paths
from contrastive_jax.data import formats, records, tfds_files
from contrastive_jax.data.units import FILE_FIELDS, UnitTable, file_parts
from contrastive_jax.datasets.catalogue import get_builder
from contrastive_jax.errors import ConfigError, DataError, InputNotFoundError
from contrastive_jax.registry import Registry

log = logging.getLogger(__name__)

# Keys each kind accepts (besides kind and weight); values are defaults, None = required.
_KEYS: dict[str, dict[str, Any]] = {
    "tfds": {"name": None, "split": "", "data_dir": "", "image_key": "image",
             "text_key": "caption", "label_key": "label"},
    "tfrecord": {"pattern": None, "keys": {}},
    "webdataset": {"pattern": None},
    "table": {"path": None, "root": "", "image_column": "image", "caption_column": "caption",
               "uid_column": "uid"},
}  # fmt: skip


def parse_source(spec: Mapping[str, Any], index: int = 0) -> dict[str, Any]:
    """A validated source spec with defaults filled in; ConfigError (one line) otherwise."""
    where = f"data.sources[{index}]"
    if not isinstance(spec, Mapping):
        raise ConfigError(f"{where} must be a dict with a 'kind', got {spec!r}")
    kind = spec.get("kind")
    if kind not in SOURCES:
        raise ConfigError(f"config key '{where}.kind': unknown source kind {kind!r} "
                          f"(known: {', '.join(SOURCES.names())})")
    allowed = _KEYS[kind]
    out = {"kind": kind, "weight": 1.0, **allowed}
    for key, value in spec.items():
        if key not in out:
            raise ConfigError(f"config key '{where}.{key}': unknown for kind {kind!r} "
                             f"(known: {', '.join(['weight', *allowed])})")
        out[key] = value
    for key, default in allowed.items():
        if default is None and not out[key]:
            raise ConfigError(f"config key '{where}.{key}' is needed by kind {kind!r}")
    weight = out["weight"]
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not weight > 0:
        raise ConfigError(f"config key '{where}.weight' must be a positive number, "
                          f"got {weight!r}")
    return out


def parse_sources(specs: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    return [parse_source(s, i) for i, s in enumerate(specs)]


def _glob(pattern: str | Sequence[str], name: str) -> list[str]:
    """Sorted files of a glob (or a list of globs/paths; listed paths may be missing)."""
    patterns = [pattern] if isinstance(pattern, str) else list(pattern)
    files = set()
    for p in patterns:
        paths.check_reachable(p, name)  # a missing bucket is named as such
        matches = paths.glob(p)
        # A listed file that is missing is kept: reading it counts it as missing_file.
        files.update(matches if matches or paths.has_magic(p) else [p])
    if not files:
        raise InputNotFoundError(f"{name}: no file matches {pattern!r}")
    return sorted(files)


class Source(abc.ABC):
    """Units of data and how to read them, in a given order, as canonical records."""

    name: str
    shuffle_units = True  # whether per-epoch unit order is shuffled
    class_names_dataset: str | None = None  # a TFDS dataset whose class names label it

    @property
    def identity(self) -> str:
        """What tells this source's data apart from another's (per-epoch counts are cached
        by it)."""
        return self.name

    unit_names: tuple[str, ...] = FILE_FIELDS  # the fields of a unit
    what = "its files"  # the units, in a message

    @abc.abstractmethod
    def unit_lists(self, streams: int) -> list[list[tuple]]:
        """Per logical stream of `streams`, its units (disjoint from the others')."""

    def unit_table(self, streams: int) -> UnitTable:
        """Every logical stream's units (data/units.py); DataError if one has none."""
        tables = self.__dict__.setdefault("_tables", {})
        if streams not in tables:
            tables[streams] = UnitTable.build(self.unit_lists(streams), self.unit_names)
            tables[streams].check(self.name, self.what)
        return tables[streams]

    def whole(self) -> dict[str, tf.Tensor]:
        """All of the source's units, in stored order."""
        return self.unit_table(1).of(0)

    @abc.abstractmethod
    def read(self, units: dict[str, tf.Tensor], order: tf.Tensor,
             cycle_length: int) -> tf.data.Dataset:
        """Canonical records of `units` (a stream's, `UnitTable.of`) taken in `order`
        (int indices into them)."""


def _interleave_files(units: dict[str, tf.Tensor], order: tf.Tensor, cycle_length: int,
                      read_file):
    """`read_file(path, stride, offset)` of the units in `order`, `cycle_length` at a time.
    A cycle longer than the units gives the same order as one of their number."""
    picked = {k: tf.gather(v, order) for k, v in units.items()}
    return tf.data.Dataset.from_tensor_slices(picked).interleave(
        lambda u: read_file(u["path"], u["stride"], u["offset"]),
        cycle_length=max(1, cycle_length), block_length=1,
        num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)  # fmt: skip


class TFRecordSource(Source):
    """TFRecord shards of tf.train.Example (the `data build` layout; `keys` renames features)."""

    def __init__(self, spec: dict[str, Any]):
        self.name = f"tfrecord {spec['pattern']}"
        self.files = _glob(spec["pattern"], self.name)
        self.keys = dict(spec["keys"])

    def unit_lists(self, streams):
        return file_parts(self.files, streams)

    def read(self, units, order, cycle_length):
        def read_file(path, stride, offset):
            raw = tf.data.Dataset.from_generator(
                lambda p, m, j: formats.read_tfrecord(p.decode(), int(m), int(j)),
                args=(path, stride, offset),
                output_signature=(tf.TensorSpec([], tf.string), tf.TensorSpec([], tf.int32)))
            return raw.map(self._to_record)

        return _interleave_files(units, order, cycle_length, read_file)

    def _to_record(self, data, reason):
        ok = tf.equal(reason, records.OK)
        parsed = tf.cond(ok, lambda: records.parse_example(data, self.keys),
                         lambda: _marker_tensors(reason, data))  # fmt: skip
        return parsed


def _marker_tensors(reason: tf.Tensor, uid: tf.Tensor) -> dict[str, tf.Tensor]:
    return {"image_bytes": tf.constant(b""), "caption": tf.constant(b""), "uid": uid,
            "label": tf.constant(-1), "score": tf.constant(np.nan, tf.float32),
            "reason": reason}  # fmt: skip


class WebdatasetSource(Source):
    """webdataset tar shards, read by a Python generator per shard (see `formats.read_tar`)."""

    def __init__(self, spec: dict[str, Any]):
        self.name = f"webdataset {spec['pattern']}"
        self.files = _glob(spec["pattern"], self.name)

    def unit_lists(self, streams):
        return file_parts(self.files, streams)

    def read(self, units, order, cycle_length):
        spec = {k: v for k, v in records.RECORD_SPEC.items()}

        def read_file(path, stride, offset):
            return tf.data.Dataset.from_generator(
                lambda p, m, j: formats.read_tar(p.decode(), int(m), int(j)),
                args=(path, stride, offset), output_signature=spec)

        return _interleave_files(units, order, cycle_length, read_file)


class TableSource(Source):
    """A CSV/TSV/JSONL table of (image, caption[, uid, label, score]); image paths are
    relative to `root` (default: the table's folder)."""

    def __init__(self, spec: dict[str, Any]):
        self.name = f"table {spec['path']}"
        self.root = spec["root"] or paths.dirname(paths.absolute(spec["path"]))
        self.rows = formats.read_table(spec["path"], spec["image_column"],
                                       spec["caption_column"], spec["uid_column"])
        if not self.rows:
            raise DataError(f"{self.name}: the table has no rows")
        # Strings as objects: a fixed-width numpy string would drop trailing NUL bytes.
        self.columns = {k: np.array([r[k] for r in self.rows], object) for k in ("caption",
                                                                                 "uid")}
        self.columns["label"] = np.array([r["label"] for r in self.rows], np.int64)
        self.columns["score"] = np.array([r["score"] for r in self.rows], np.float32)
        self.columns["path"] = np.array([formats.resolve(self.root, r["image"])
                                         for r in self.rows], object)

    unit_names = ("row",)
    what = "its table's rows (a table is split by rows, no further)"

    def unit_lists(self, streams):
        return [[(i,) for i in range(s, len(self.rows), streams)] for s in range(streams)]

    def read(self, units, order, cycle_length):
        cols = {k: tf.constant(v) for k, v in self.columns.items()}
        paths = cols["path"]

        def row(i):
            data, reason = tf.numpy_function(_read_image_file, [paths[i]], (tf.string, tf.int32),
                                             stateful=False)  # fmt: skip
            data.set_shape([])
            reason.set_shape([])
            return {"image_bytes": data, "caption": cols["caption"][i], "uid": cols["uid"][i],
                    "label": tf.cast(cols["label"][i], tf.int32), "score": cols["score"][i],
                    "reason": reason}  # fmt: skip

        return tf.data.Dataset.from_tensor_slices(tf.gather(units["row"], order)).map(
            row, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def _read_image_file(path: bytes) -> tuple[bytes, np.int32]:
    try:
        return paths.read_bytes(os.fsdecode(path)), np.int32(records.OK)
    except paths.read_errors():
        log.warning("missing image file %s: skipped (counted as missing_file)", path.decode())
        return b"", np.int32(records.MISSING)


class TfdsSource(Source):
    """A TFDS dataset by name (the project's own builders prepare themselves offline).

    An Image feature is stored encoded and goes through the same guarded decode as every
    other source. A raw uint8 tensor feature (fashion_mnist_captions') is already decoded:
    it is passed on as "image", so no codec runs per example. Logical stream s of L reads
    `tfds.even_splits(split, L)[s]`: the file instructions (file, skip, take) TFDS gives
    that part, read as `builder.as_dataset` reads them (same interleave, parser and
    decoders), so that one traced function reads any stream's part.
    """

    shuffle_units = False

    def __init__(self, spec: dict[str, Any], data_config: ml_collections.ConfigDict):
        self.spec = spec
        self.name = f"tfds {spec['name']}"
        self.class_names_dataset = spec["name"]
        self.split = spec["split"] or data_config.train_split
        self.builder = get_builder(spec["name"], spec["data_dir"] or data_config.data_dir)
        # Listed in `data.sources`, its images take `data.channels` like every other source's
        # (a mixture batches them together); `data.dataset` keeps the dataset's own.
        self.channels = data_config.channels if data_config.sources else None
        features = self.builder.info.features
        for key in ("image_key", "text_key", "label_key"):
            if spec[key] and spec[key] not in features:
                raise DataError(f"{self.name} has no feature {spec[key]!r} (its {key}); "
                                f"features: {', '.join(features.keys())}")

    @property
    def identity(self) -> str:
        return f"{self.name} {self.split} {self.builder.data_dir}"

    unit_names = ("path", "skip", "take")
    what = "its split's examples"

    def unit_lists(self, streams):
        import tensorflow_datasets as tfds

        info = self.builder.info
        if info.file_format is not None and info.file_format.value != "tfrecord":
            raise DataError(f"{self.name}: stored as {info.file_format.value}; logical "
                            f"streams read TFDS's tfrecord files only (prepare it as tfrecord)")
        out = []
        for part in tfds.even_splits(self.split, n=streams):  # parts differ by one at most
            try:
                instructions = info.splits[part].file_instructions
            except (ValueError, AssertionError):  # a part without examples (or an error
                instructions = []  # TFDS words its own way): the table check names it
            out.append([(os.fspath(f.filename), f.skip, f.take) for f in instructions])
        return out

    def read(self, units, order, cycle_length):
        import tensorflow_datasets as tfds

        s = self.spec
        features = self.builder.info.features
        encoded = isinstance(features[s["image_key"]], tfds.features.Image)
        decoders = {s["image_key"]: tfds.decode.SkipDecoding()} if encoded else None
        ds = tfds_files.examples(self.builder,
                                 {k: tf.gather(v, order) for k, v in units.items()}, decoders)

        def select(ex):
            label = tf.cast(ex[s["label_key"]], tf.int32) if s["label_key"] else tf.constant(-1)
            uid = ex["uid"] if "uid" in features.keys() else tf.constant("")
            image_key = "image_bytes" if encoded else "image"
            image = ex[s["image_key"]] if encoded else _with_channels(ex[s["image_key"]],
                                                                      self.channels)
            return {image_key: image, "caption": ex[s["text_key"]], "uid": uid,
                    "label": label, "score": tf.constant(np.nan, tf.float32),
                    "reason": tf.constant(records.OK)}  # fmt: skip

        return ds.map(select, num_parallel_calls=tf.data.AUTOTUNE)


def _with_channels(image: tf.Tensor, channels: int | None) -> tf.Tensor:
    """A decoded uint8 [H, W, C] image with `channels` channels (None: as it is)."""
    have = image.shape[-1]
    if channels is None or have == channels:
        return image
    if have == 1:
        return tf.tile(image, [1, 1, channels])
    if have == 3 and channels == 1:
        return tf.image.rgb_to_grayscale(image)
    raise DataError(f"a tfds source's images have {have} channels; 'data.channels' is "
                    f"{channels}")


SOURCES: Registry[Callable[[dict[str, Any], ml_collections.ConfigDict], Source]] = Registry(
    "source kind", {
        "tfds": TfdsSource,
        "tfrecord": lambda spec, _: TFRecordSource(spec),
        "webdataset": lambda spec, _: WebdatasetSource(spec),
        "table": lambda spec, _: TableSource(spec),
    }, config_key="data.sources[].kind")  # fmt: skip
KINDS = SOURCES.names()


def source_specs(data_config: ml_collections.ConfigDict) -> list[dict[str, Any]]:
    """The run's sources, parsed: `data.sources`, or `data.dataset` as one tfds source."""
    cfg = data_config
    if cfg.sources:
        return parse_sources(cfg.sources)
    if not cfg.dataset:
        raise ConfigError("config key 'data.dataset' is empty and 'data.sources' too: "
                          "name a TFDS dataset or list sources")
    return [parse_source({"kind": "tfds", "name": cfg.dataset, "split": cfg.train_split,
                          "data_dir": cfg.data_dir or "", "image_key": cfg.image_key,
                          "text_key": cfg.text_key, "label_key": cfg.label_key or ""})]


def create_source(spec: dict[str, Any], data_config: ml_collections.ConfigDict) -> Source:
    """The Source for a parsed spec (see `parse_source`)."""
    return SOURCES[spec["kind"]](spec, data_config)
