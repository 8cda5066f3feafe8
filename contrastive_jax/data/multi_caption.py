"""Images with several captions each (COCO-style) for retrieval evaluation."""

from __future__ import annotations

from collections.abc import Iterator

import ml_collections
import numpy as np
import tensorflow as tf

from contrastive_jax.data import preprocess
from contrastive_jax.data.tfds_files import read_split
from contrastive_jax.datasets.catalogue import get_builder
from contrastive_jax.errors import DataError


def _feature(example: dict, key: str):
    """`a/b` looks up example["a"]["b"] (TFDS nests sequence-of-dict features)."""
    value = example
    for part in key.split("/"):
        if not isinstance(value, dict) or part not in value:
            raise DataError(f"retrieval: dataset has no feature {key!r}")
        value = value[part]
    return value


def iter_multi_caption(data_config: ml_collections.ConfigDict, dataset: str, split: str,
                       captions_key: str, limit: int = 0, batch_size: int = 256,
                       ) -> Iterator[tuple[np.ndarray, list[list[str]]]]:
    """Chunks (images [b, H, W, C] float32 in the model's value range, captions per image)
    of the first `limit` examples of `split` (all when 0), in stored order."""
    cfg = data_config
    builder = get_builder(dataset, cfg.data_dir)
    ds = read_split(builder, split)
    if limit:
        ds = ds.take(limit)

    def select(ex):
        image = preprocess.scale_images(ex[cfg.image_key], cfg.value_range, cfg.image_size)
        # A scalar caption feature becomes a list of one; images differ in size before
        # resizing, so examples are read one at a time.
        texts = tf.reshape(_feature(ex, captions_key), [-1])
        return {"image": image, "captions": preprocess.clean_captions(texts, cfg.lowercase)}

    images, captions, seen = [], [], 0
    for ex in ds.map(select, num_parallel_calls=tf.data.AUTOTUNE).as_numpy_iterator():
        images.append(ex["image"])
        captions.append([c.decode("utf-8", "replace") for c in ex["captions"]])
        seen += 1
        if len(images) == batch_size:
            yield np.stack(images), captions
            images, captions = [], []
    if images:
        yield np.stack(images), captions
    if not seen:
        raise DataError(f"retrieval: {dataset} {split} has no examples")


def flatten_captions(captions: list[list[str]]) -> tuple[list[str], np.ndarray]:
    """(all captions, image index of each); images without a usable caption are an error."""
    texts, owner = [], []
    for i, caps in enumerate(captions):
        usable = [c for c in caps if c.strip()]
        if not usable:
            raise DataError(f"retrieval: image {i} has no non-empty caption")
        texts += usable
        owner += [i] * len(usable)
    return texts, np.asarray(owner, np.int64)
