"""Evaluation reads of a TFDS split: padded image/label batches read once, and labels."""

from __future__ import annotations

import ml_collections
import numpy as np
import tensorflow as tf

from contrastive_jax.data import preprocess
from contrastive_jax.datasets.catalogue import get_builder, read_split


def _options() -> tf.data.Options:
    options = tf.data.Options()
    options.deterministic = True  # stored order: eval results do not depend on scheduling
    return options


def eval_dataset(
    data_config: ml_collections.ConfigDict, *, split: str, batch_size: int,
    dataset: str | None = None,
) -> tf.data.Dataset:
    """Batches {"image", "label", "mask"} of `split` of `dataset` (default `data.dataset`)
    in stored order, read once.

    The last batch is padded to `batch_size` with mask 0 (label -1), so every example is
    seen exactly once and shapes stay fixed. Batches are global: every process reads all of
    them and feeds only its own rows to the mesh (`zeroshot_accuracy`).
    """
    cfg = data_config
    builder = get_builder(dataset or cfg.dataset, cfg.data_dir)

    def select(ex):
        label = tf.cast(ex[cfg.label_key], tf.int32) if cfg.label_key else tf.constant(-1)
        return {"image": ex[cfg.image_key], "label": label}

    ds = read_split(builder, split).map(select, num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.batch(batch_size)

    def finish(batch):
        batch = {**batch, "image": preprocess.scale_images(
            batch["image"], cfg.value_range, cfg.image_size)}  # fmt: skip
        return preprocess.pad_batch(batch, batch_size)

    ds = ds.map(finish, num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE).with_options(_options())


def labels(data_config: ml_collections.ConfigDict, split: str,
           dataset: str | None = None) -> np.ndarray:
    """int64 [N]: the labels of a split in stored order (the images are not decoded)."""
    cfg = data_config
    builder = get_builder(dataset or cfg.dataset, cfg.data_dir)
    ds = read_split(builder, split, skip_images=cfg.image_key).map(lambda ex: ex[cfg.label_key])
    chunks = list(ds.batch(8192).as_numpy_iterator())
    return np.concatenate(chunks).astype(np.int64) if chunks else np.zeros(0, np.int64)
