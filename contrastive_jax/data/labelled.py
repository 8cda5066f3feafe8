"""Labelled images for evaluation, from any data kind of `evals.tasks[].data`.

`open_labelled(spec, data_config)` lists a dataset's examples and labels without decoding
an image, and reads padded batches {"image", "label", "mask", "index"} in stored order.
Every process reads every batch (evaluators feed each process's rows to the mesh). An
image that fails to decode is dropped from its batch and counted by its index
(`LabelledImages.undecodable`), never a crash and never a silent skip.

Images are resized to the model's square size without cropping, as training resizes them
(`augment.resize`; big_vision's SigLIP evals resize the same way); for a NaFlex model they
become patch sequences at their own aspect ratio within a budget (`data/naflex.py`).
"""

from __future__ import annotations

import csv
import glob
import json
import os
import tarfile
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import ml_collections
import numpy as np
import tensorflow as tf

from contrastive_jax import paths as storage  # `paths` here: lists of image paths
from contrastive_jax.data import augment, formats, preprocess
from contrastive_jax.data.naflex import naflex_patches
from contrastive_jax.data.tfds_files import read_split
from contrastive_jax.datasets.catalogue import class_names as tfds_class_names
from contrastive_jax.datasets.catalogue import get_builder, not_prepared
from contrastive_jax.errors import DataError, InputNotFoundError
from contrastive_jax.registry import Registry

_IMAGE_SUFFIXES = tuple(f".{e}" for e in (*formats.IMAGE_EXTENSIONS, "bmp", "gif"))


class LabelledImages:
    """One dataset's examples: `labels` [N] (int64), `names` (the data's own class names,
    or None when its labels are bare numbers) and `batches()`."""

    def __init__(self, where: str, labels: np.ndarray, names: Sequence[str] | None,
                 data_config: ml_collections.ConfigDict, read,
                 paths: Sequence[str] | None = None):
        self.where, self.labels, self.names, self.paths = where, labels, names, paths
        self._config, self._read = data_config, read  # read(keep) -> tf.data of examples
        self.undecodable: list[int] = []

    def __len__(self) -> int:
        return len(self.labels)

    def describe(self, index: int) -> str:
        """An example for messages: its file, or its position."""
        return self.paths[index] if self.paths is not None else f"example {index}"

    def batches(self, batch_size: int, keep: np.ndarray | None = None,
                naflex: tuple[int, int] | None = None) -> Iterator[dict]:
        """Global batches of the examples at positions `keep` (default: all), in order.
        `naflex` (patch, budget): "patches", "patch_mask" and "shape" (`naflex_patches`)
        instead of square "image"s."""
        if not len(self.labels) or keep is not None and not len(keep):
            raise DataError(f"{self.where}: no examples to evaluate")
        wanted = np.arange(len(self.labels)) if keep is None else np.unique(keep)
        cfg, expected = self._config, 0
        ds = self._read(wanted)
        if naflex is not None:  # each image at its own size -> its padded patch sequence
            ds = ds.map(_patchified(*naflex, cfg.value_range),
                        num_parallel_calls=tf.data.AUTOTUNE)

            def scaled(b):
                return b
        else:
            # Images of one static shape (TFDS tensors) are resized a batch at a time;
            # images of any size (files) one at a time, before they can be batched.
            same_shape = ds.element_spec["image"].shape.is_fully_defined()
            if not same_shape:
                ds = ds.map(_resized(cfg.image_size), num_parallel_calls=tf.data.AUTOTUNE)

            def scaled(b):
                return {**b, "image": preprocess.scale_images(
                    b["image"], cfg.value_range, cfg.image_size if same_shape else None)}
        ds = ds.ignore_errors()  # an undecodable image: dropped, counted by its index below
        ds = ds.batch(batch_size).map(lambda b: preprocess.pad_batch(scaled(b), batch_size),
                                      num_parallel_calls=tf.data.AUTOTUNE)
        options = tf.data.Options()
        options.deterministic = True  # stored order, whatever the scheduling
        for batch in ds.prefetch(2).with_options(options).as_numpy_iterator():
            index = batch["index"][batch["mask"] > 0]
            for i in index:  # positions in `wanted` that never arrived failed to decode
                while wanted[expected] != i:
                    self.undecodable.append(int(wanted[expected]))
                    expected += 1
                expected += 1
            yield batch
        self.undecodable.extend(int(i) for i in wanted[expected:])


def _resized(size: int):
    def fn(ex):
        image = ex["image"]
        if image.shape.rank == 3 and tuple(image.shape[:2]) == (size, size):
            image = tf.cast(image, tf.float32)
        else:
            image = augment.resize(image, size)
        return {**ex, "image": image}
    return fn


def _patchified(patch: int, budget: int, value_range):
    def fn(ex):
        out = naflex_patches(ex["image"], patch, budget, value_range)
        rest = {k: v for k, v in ex.items() if k != "image"}
        return {**rest, "patches": out["patches"], "patch_mask": out["mask"],
                "shape": out["shape"]}
    return fn


def _decoded(channels: int):
    def fn(index, image_bytes, label):
        return {"image": augment.decode(image_bytes, channels), "label": label, "index": index}
    return fn


def _read_file_or_empty(path: bytes) -> bytes:
    try:
        return storage.read_bytes(path.decode())
    except storage.read_errors():
        return b""  # decodes as no image: counted and skipped like an undecodable one


def _files_reader(files: Sequence[str], labels: np.ndarray, channels: int):
    remote = any(storage.is_url(f) for f in files)
    files = np.asarray(files, dtype=object)

    def read_file(path: tf.Tensor) -> tf.Tensor:
        if not remote:
            return tf.io.read_file(path)
        # TensorFlow's file system cannot reach the project's object stores (see paths.py).
        data = tf.numpy_function(_read_file_or_empty, [path], tf.string, stateful=False)
        data.set_shape([])
        return data

    def read(wanted: np.ndarray) -> tf.data.Dataset:
        ds = tf.data.Dataset.from_tensor_slices(
            (wanted.astype(np.int64), files[wanted].astype(str), labels[wanted].astype(np.int32)))
        # A missing or unreadable file fails like an undecodable image: counted, skipped.
        ds = ds.map(lambda i, p, y: (i, read_file(p), y), num_parallel_calls=tf.data.AUTOTUNE)
        return ds.map(_decoded(channels), num_parallel_calls=tf.data.AUTOTUNE)
    return read


def _image_folder(spec: Mapping[str, Any], data_config: ml_collections.ConfigDict, where: str):
    root = spec["path"]
    storage.check_reachable(root, where)
    if not storage.isdir(root):
        raise InputNotFoundError(f"{where}: image folder not found: {root}")
    classes = [d for d in storage.listdir(root) if storage.isdir(storage.join(root, d))]
    if not classes:
        raise DataError(f"{where}: {root} has no class subfolders")
    images, labels = [], []
    for label, name in enumerate(classes):
        files = [f for f in storage.listdir(storage.join(root, name))
                 if f.lower().endswith(_IMAGE_SUFFIXES)]
        if not files:
            raise DataError(f"{where}: class folder {storage.join(root, name)} has no images")
        images += [storage.join(root, name, f) for f in files]
        labels += [label] * len(files)
    labels = np.asarray(labels, np.int64)
    return labels, classes, _files_reader(images, labels, data_config.channels), images


def _table_rows(path: str, where: str) -> list[dict]:
    storage.check_reachable(path, where)
    if not storage.isfile(path):
        raise InputNotFoundError(f"{where}: table file not found: {path}")
    with storage.open_file(path, "r", encoding="utf-8", newline="") as f:
        if path.endswith((".jsonl", ".json")):
            rows = []
            for number, line in enumerate(f, 1):
                if line.strip():
                    try:
                        rows.append(json.loads(line))
                    except json.JSONDecodeError as e:
                        raise DataError(f"{where}: {path} line {number} is not JSON: {e}") from e
            return rows
        return list(csv.DictReader(f, delimiter="\t" if path.endswith(".tsv") else ","))


def label_ids(values: Sequence[Any], where: str) -> tuple[np.ndarray, list[str] | None]:
    """Labels as ids: whole numbers stay ids (no names); text labels become the index of
    their sorted unique names, which are returned as the data's class names."""
    if all(isinstance(v, int) or isinstance(v, str) and v.strip().lstrip("-").isdigit()
           for v in values):
        return np.asarray([int(v) for v in values], np.int64), None
    if not all(isinstance(v, str) and v for v in values):
        bad = next(v for v in values if not isinstance(v, str) or not v)
        raise DataError(f"{where}: label {bad!r} is neither a class id nor a class name")
    names = sorted(set(values))
    index = {n: i for i, n in enumerate(names)}
    return np.asarray([index[v] for v in values], np.int64), names


def _table(spec: Mapping[str, Any], data_config: ml_collections.ConfigDict, where: str):
    path = spec["path"]
    root = spec["root"] or storage.dirname(storage.absolute(path))
    rows = _table_rows(path, where)
    image_col, label_col = spec["image_column"], spec["label_column"]
    for i, row in enumerate(rows):
        if not isinstance(row, dict) or image_col not in row or label_col not in row:
            raise DataError(f"{where}: {path} row {i} needs columns {image_col!r} and "
                            f"{label_col!r}")
    labels, names = label_ids([r[label_col] for r in rows], f"{where} ({path})")
    images = [formats.resolve(root, str(r[image_col])) for r in rows]
    return labels, names, _files_reader(images, labels, data_config.channels), images


def _tar_samples(files: Sequence[str], label_key: str, where: str) -> Iterator[tuple]:
    """(image bytes, label value) per sample of webdataset shards, in stored order."""
    for path in files:
        key, parts = None, {}
        with storage.open_file(path, "rb") as raw, tarfile.open(fileobj=raw, mode="r|*") as tar:
            for member in tar:
                split = formats.split_key(member.name) if member.isfile() else None
                if split is None:
                    continue
                if split[0] != key and key is not None:
                    yield _tar_sample(parts, label_key, f"{where}: {path} sample {key}")
                    parts = {}
                key = split[0]
                parts[split[1]] = tar.extractfile(member).read()
        if key is not None:
            yield _tar_sample(parts, label_key, f"{where}: {path} sample {key}")


def _tar_sample(parts: dict[str, bytes], label_key: str, where: str) -> tuple[bytes, Any]:
    image = next((parts[e] for e in formats.IMAGE_EXTENSIONS if e in parts), b"")
    if label_key == "cls":
        if "cls" not in parts:
            raise DataError(f"{where} has no .cls member")
        return image, parts["cls"].decode("utf-8", "replace").strip()
    try:
        meta = json.loads(parts.get("json", b"{}"))
    except (ValueError, UnicodeDecodeError) as e:
        raise DataError(f"{where}: its .json is not JSON ({e})") from e
    if not isinstance(meta, dict) or label_key not in meta:
        raise DataError(f"{where}: its .json has no label {label_key!r}")
    return image, meta[label_key]


def _webdataset(spec: Mapping[str, Any], data_config: ml_collections.ConfigDict, where: str):
    storage.check_reachable(spec["pattern"], where)
    files = storage.glob(spec["pattern"])
    if not files:
        raise InputNotFoundError(f"{where}: no webdataset shards match {spec['pattern']!r}")
    # One pass for the labels (image bytes dropped: shards can be far larger than memory),
    # then each read streams the shards again, yielding the wanted samples.
    labels, names = label_ids([value for _, value in _tar_samples(files, spec["label"], where)],
                              where)

    def read(wanted: np.ndarray) -> tf.data.Dataset:
        def gen():
            take = np.zeros(len(labels), bool)
            take[wanted] = True
            for i, (image, _) in enumerate(_tar_samples(files, spec["label"], where)):
                if take[i]:
                    yield i, image, int(labels[i])
        ds = tf.data.Dataset.from_generator(gen, output_signature=(
            tf.TensorSpec([], tf.int64), tf.TensorSpec([], tf.string),
            tf.TensorSpec([], tf.int32)))
        return ds.map(_decoded(data_config.channels), num_parallel_calls=tf.data.AUTOTUNE)
    return labels, names, read, None


def _tfds(spec: Mapping[str, Any], data_config: ml_collections.ConfigDict, where: str):
    data_dir = spec["data_dir"] or data_config.data_dir or None
    missing = not_prepared(spec["name"], data_dir)
    if missing:  # else TFDS's AssertionError, with a traceback
        raise InputNotFoundError(f"{where}: {missing}")
    builder = get_builder(spec["name"], data_dir)
    label_key, image_key = spec["label_key"], spec["image_key"]
    features = builder.info.features
    for key in (image_key, label_key):
        if key not in features:
            raise DataError(f"{where}: TFDS dataset {spec['name']!r} has no feature {key!r} "
                            f"(has {', '.join(features)})")
    chunks = list(read_split(builder, spec["split"], skip_images=image_key)
                  .map(lambda ex: ex[label_key]).batch(8192).as_numpy_iterator())
    labels = np.concatenate(chunks).astype(np.int64) if chunks else np.zeros(0, np.int64)
    names = getattr(features[label_key], "names", None)
    if names is not None:
        names = tfds_class_names(spec["name"], data_dir, label_key)

    def read(wanted: np.ndarray) -> tf.data.Dataset:
        ds = read_split(builder, spec["split"]).enumerate()
        if len(wanted) < len(labels):  # a subset (few-shot draws): the rest is skipped
            keep = np.zeros(len(labels), bool)
            keep[wanted] = True
            ds = ds.filter(lambda i, ex: tf.gather(keep, i))
        return ds.map(lambda i, ex: {"image": _channels(ex[image_key], data_config.channels),
                                     "label": tf.cast(ex[label_key], tf.int32), "index": i},
                      num_parallel_calls=tf.data.AUTOTUNE)
    return labels, names, read, None


def _channels(image: tf.Tensor, channels: int) -> tf.Tensor:
    # A grey-scale [H, W, 1] image for an RGB model: the channel repeated; and back.
    if image.shape[-1] == 1 and channels == 3:
        return tf.image.grayscale_to_rgb(image)
    if image.shape[-1] == 3 and channels == 1:
        return tf.image.rgb_to_grayscale(image)
    return image


def data_config_for(config: ml_collections.ConfigDict,
                    spec: Mapping[str, Any]) -> ml_collections.ConfigDict:
    """The run's data config for reading a task's data: images of the model's size, value
    range and channels, and the task's TFDS dataset (if it reads one)."""
    cfg = config.data.copy_and_resolve_references()
    image_model = config.model.get("image")
    if image_model is not None and "channels" in image_model:
        cfg.channels = image_model.channels  # decode as the model reads, whatever data says
    if spec["kind"] == "tfds":
        cfg.dataset = spec["name"]
        cfg.data_dir = spec["data_dir"] or cfg.data_dir
        cfg.image_key, cfg.label_key = spec["image_key"], spec["label_key"]
    return cfg


# data kind -> (spec, data_config, where) -> (labels, class names or None, read, paths or None)
LABELLED_KINDS: Registry = Registry("eval data kind", {
    "tfds": _tfds, "image_folder": _image_folder, "table": _table, "webdataset": _webdataset,
}, config_key="evals.tasks[].data.kind")


def image_files(pattern: str) -> list[str]:
    """Image files of a folder (searched recursively) or a glob, sorted."""
    storage.check_reachable(pattern, "--images")
    if storage.isdir(pattern):
        found = storage.files_under(pattern)
    elif storage.is_url(pattern):
        found = [f for f in storage.glob(pattern) if storage.isfile(f)]
    else:
        found = [f for f in glob.glob(pattern, recursive=True) if os.path.isfile(f)]
    files = sorted(f for f in found if f.lower().endswith(_IMAGE_SUFFIXES))
    if not files:
        raise InputNotFoundError(f"no image files in {pattern!r}")
    return files


def unlabelled_files(paths: Sequence[str], data_config: ml_collections.ConfigDict,
                     where: str) -> LabelledImages:
    """Image files to embed, each with label 0."""
    labels = np.zeros(len(paths), np.int64)
    return LabelledImages(where, labels, None, data_config,
                          _files_reader(paths, labels, data_config.channels), paths)


def open_labelled(spec: Mapping[str, Any], data_config: ml_collections.ConfigDict,
                  where: str) -> LabelledImages:
    """The labelled images of a parsed data spec (`config.eval_tasks.parse_data`); `where` names
    the task in errors."""
    labels, names, read, paths = LABELLED_KINDS[spec["kind"]](spec, data_config, where)
    return LabelledImages(where, labels, names, data_config, read, paths)


def split_of(data_config: ml_collections.ConfigDict, split: str,
             where: str = "eval") -> LabelledImages:
    """Split `split` of the TFDS dataset `data.dataset`, read as eval tasks read it, with
    the channels it stores."""
    data_config = data_config.copy_and_resolve_references()
    stored = get_builder(data_config.dataset, data_config.data_dir or None).info.features
    data_config.channels = stored[data_config.image_key].shape[-1] or data_config.channels
    spec = {"kind": "tfds", "name": data_config.dataset, "split": split,
            "data_dir": data_config.data_dir or "", "image_key": data_config.image_key,
            "label_key": data_config.label_key}
    return open_labelled(spec, data_config, where)
