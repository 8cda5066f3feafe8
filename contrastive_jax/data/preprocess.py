"""In-graph preprocessing ops for the tf.data pipelines (images, captions, eval padding)."""

from __future__ import annotations

from collections.abc import Sequence

import tensorflow as tf

from contrastive_jax.data.text_conventions import lowercase_mode


def scale_images(
    images: tf.Tensor, value_range: Sequence[float], image_size: int | None = None
) -> tf.Tensor:
    """uint8 [..., H, W, C] -> float32 in `value_range`, resized to `image_size` if it differs."""
    lo, hi = (float(v) for v in value_range)
    x = tf.cast(images, tf.float32)
    if image_size is not None and tuple(x.shape[-3:-1]) != (image_size, image_size):
        # Bilinear with antialias: shrinking without it aliases badly on small images.
        x = tf.image.resize(x, (image_size, image_size), antialias=True)
        x = tf.clip_by_value(x, 0.0, 255.0)
    return x * ((hi - lo) / 255.0) + lo


def clean_captions(captions: tf.Tensor, lowercase: bool | str) -> tf.Tensor:
    """Strips whitespace and lowercases a string tensor by `data.lowercase`: True or
    "unicode" Unicode-aware, "ascii" A-Z only (big_vision's op), False not at all."""
    captions = tf.strings.strip(captions)
    mode = lowercase_mode(lowercase)
    if mode != "none":
        # encoding "" is tf.strings.lower's default, the one big_vision's tokenize uses.
        captions = tf.strings.lower(captions, encoding="utf-8" if mode == "unicode" else "")
    return captions


def pad_batch(batch: dict[str, tf.Tensor], batch_size: int) -> dict[str, tf.Tensor]:
    """Pads every [n, ...] entry to [batch_size, ...] and adds `mask` (1 real, 0 pad).

    Padding is 0, except `label`, padded with -1 so a pad row never looks like class 0.

    Lets eval keep the final partial batch: a fixed shape for jit, no example dropped or
    counted twice (callers weight metrics by mask).
    """
    n = tf.shape(next(iter(batch.values())))[0]
    pad = batch_size - n
    out = {}
    for key, value in batch.items():
        paddings = [[0, pad]] + [[0, 0]] * (len(value.shape) - 1)
        padded = tf.pad(value, paddings, constant_values=-1 if key == "label" else 0)
        padded.set_shape([batch_size, *value.shape[1:]])
        out[key] = padded
    mask = tf.concat([tf.ones([n], tf.int32), tf.zeros([pad], tf.int32)], axis=0)
    mask.set_shape([batch_size])
    out["mask"] = mask
    return out
