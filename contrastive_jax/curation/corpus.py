"""Reads the training data once, in stored order, for the offline passes (score, dedup)."""

from __future__ import annotations

from collections.abc import Iterator

import ml_collections
import numpy as np
import tensorflow as tf

from contrastive_jax.data import preprocess
from contrastive_jax.data.stream import whole_sources
from contrastive_jax.data.tokenizer import Tokenizer
from contrastive_jax.errors import DataError


def split_batches(
    data_cfg: ml_collections.ConfigDict,
    split: str | None,
    batch_size: int,
    tokenizer: Tokenizer | None = None,
) -> Iterator[dict[str, np.ndarray]]:
    """Batches {"uid" bytes, "pixels" bytes (serialized uint8 image), "image" f32, and
    "text" int32 tokens if a tokenizer is given} of every usable example of the training
    sources (`data.sources`, or `split` of `data.dataset`); the last batch may be short.
    Per-example score and keep files are keyed by uid, so every example needs one."""
    cfg = data_cfg.copy_and_resolve_references()
    if split:  # names a split of `data.dataset`; listed sources name their own
        cfg.train_split = split

    def select(ex):
        image = ex["image"]
        return {"uid": ex["uid"], "caption": ex["caption"],
                "pixels": tf.io.serialize_tensor(image),
                "image": preprocess.scale_images(image, cfg.value_range, cfg.image_size)}

    def finish(batch):
        if tokenizer is not None:
            captions = preprocess.clean_captions(batch["caption"], cfg.lowercase)
            batch["text"] = tokenizer.tf_tokenize(captions, cfg.max_len)
        return batch

    for ds in whole_sources(cfg):
        ds = ds.map(select, num_parallel_calls=tf.data.AUTOTUNE).batch(batch_size)
        ds = ds.map(finish, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)
        for batch in ds.as_numpy_iterator():
            if (batch["uid"] == b"").any():
                raise DataError("the training data has examples without a uid; per-example "
                                "score and keep files are keyed by uid")
            yield batch
