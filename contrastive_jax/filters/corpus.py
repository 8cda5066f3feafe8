"""Reads a whole split once, in stored order, for the offline passes (score, dedup)."""

from __future__ import annotations

from collections.abc import Iterator

import ml_collections
import numpy as np
import tensorflow as tf

from contrastive_jax.data import preprocess
from contrastive_jax.data.tokenizer import Tokenizer
from contrastive_jax.datasets.catalogue import get_builder


def split_batches(
    data_cfg: ml_collections.ConfigDict,
    split: str,
    batch_size: int,
    tokenizer: Tokenizer | None = None,
) -> Iterator[dict[str, np.ndarray]]:
    """Batches {"uid" bytes, "pixels" bytes (serialized uint8 image), "image" f32, and
    "text" int32 tokens if a tokenizer is given}; the last batch may be short."""
    cfg = data_cfg
    builder = get_builder(cfg.dataset, cfg.data_dir)
    if "uid" not in builder.info.features.keys():
        raise ValueError(f"dataset {cfg.dataset!r} has no 'uid' feature; per-example score "
                         "and keep files are keyed by uid")
    ds = builder.as_dataset(split=split, shuffle_files=False)

    def select(ex):
        image = ex[cfg.image_key]
        return {"uid": ex["uid"], "caption": ex[cfg.text_key],
                "pixels": tf.io.serialize_tensor(image),
                "image": preprocess.scale_images(image, cfg.value_range, cfg.image_size)}

    ds = ds.map(select, num_parallel_calls=tf.data.AUTOTUNE).batch(batch_size)

    def finish(batch):
        if tokenizer is not None:
            captions = preprocess.clean_captions(batch["caption"], cfg.lowercase)
            batch["text"] = tokenizer.tf_tokenize(captions, cfg.max_len)
        return batch

    ds = ds.map(finish, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)
    yield from ds.as_numpy_iterator()
