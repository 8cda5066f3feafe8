"""Per-example image and caption ops for source streams; every random op is stateless.

Each random op takes an int64 [2] `seed` derived from (run seed, process, source, stream
position), so a resumed stream augments every example exactly as the uninterrupted one.

Augmentations follow "Improved baselines for vision-language pre-training" (Fini et al.
2023), which found strong image augmentation (random resized crop, colour jitter,
grayscale) and EDA-style text augmentation to give most of CLIP's improvement. Of EDA's
four ops, random deletion and random swap are implemented; synonym replacement and
insertion need a thesaurus (WordNet) and are not.
"""

from __future__ import annotations

from collections.abc import Sequence

import tensorflow as tf


def decode(image_bytes: tf.Tensor, channels: int) -> tf.Tensor:
    """JPEG/PNG/GIF/BMP/WebP bytes -> uint8 [H, W, channels] (first frame of animations)."""
    image = tf.io.decode_image(image_bytes, channels=channels, expand_animations=False)
    image.set_shape([None, None, channels])
    return image


def _op_seed(seed: tf.Tensor, op: int) -> tf.Tensor:
    """A distinct seed per op from one example seed."""
    return tf.stack([seed[0] * 7919 + op, seed[1]])


def inception_crop(image: tf.Tensor, seed: tf.Tensor, area_range: Sequence[float],
                   aspect_range: Sequence[float]) -> tf.Tensor:
    """Random crop covering `area_range` of the image with aspect ratio in `aspect_range`."""
    begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
        tf.shape(image), tf.zeros([0, 0, 4], tf.float32), seed=_op_seed(seed, 1),
        area_range=tuple(area_range), aspect_ratio_range=tuple(aspect_range),
        min_object_covered=0.0, use_image_if_no_bounding_boxes=True)  # fmt: skip
    return tf.slice(image, begin, size)


def resize(image: tf.Tensor, size: int) -> tf.Tensor:
    """uint8/float [H, W, C] -> float32 [size, size, C] in [0, 255] (bilinear, antialiased)."""
    x = tf.image.resize(tf.cast(image, tf.float32), (size, size), antialias=True)
    return tf.clip_by_value(x, 0.0, 255.0)


def flip(image: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    return tf.image.stateless_random_flip_left_right(image, seed=_op_seed(seed, 2))


def color_jitter(image: tf.Tensor, seed: tf.Tensor, strength: float,
                 prob: float = 0.8) -> tf.Tensor:
    """SimCLR colour jitter on float [0, 255] RGB: brightness, contrast, saturation, hue."""
    s = strength
    x = image / 255.0
    jittered = tf.image.stateless_random_brightness(x, 0.8 * s, seed=_op_seed(seed, 3))
    jittered = tf.image.stateless_random_contrast(jittered, 1 - 0.8 * s, 1 + 0.8 * s,
                                                  seed=_op_seed(seed, 4))  # fmt: skip
    if image.shape[-1] == 3:
        jittered = tf.image.stateless_random_saturation(jittered, 1 - 0.8 * s, 1 + 0.8 * s,
                                                        seed=_op_seed(seed, 5))  # fmt: skip
        jittered = tf.image.stateless_random_hue(jittered, min(0.2 * s, 0.5),
                                                 seed=_op_seed(seed, 6))  # fmt: skip
    apply = tf.random.stateless_uniform([], _op_seed(seed, 7)) < prob
    out = tf.where(apply, jittered, x)
    return tf.clip_by_value(out, 0.0, 1.0) * 255.0


def random_grayscale(image: tf.Tensor, seed: tf.Tensor, prob: float) -> tf.Tensor:
    """With probability `prob`, an RGB image's luma in all three channels."""
    if image.shape[-1] != 3:
        return image
    gray = tf.tile(tf.image.rgb_to_grayscale(image), [1, 1, 3])
    return tf.where(tf.random.stateless_uniform([], _op_seed(seed, 8)) < prob, gray, image)


def random_word_deletion(caption: tf.Tensor, seed: tf.Tensor, prob: float) -> tf.Tensor:
    """EDA random deletion: drops each word with probability `prob`, keeping at least one."""
    words = tf.strings.split(caption)
    keep = tf.random.stateless_uniform(tf.shape(words), _op_seed(seed, 9)) >= prob
    kept = tf.boolean_mask(words, keep)
    kept = tf.cond(tf.size(kept) > 0, lambda: kept, lambda: words[:1])
    return tf.strings.reduce_join(kept, separator=" ")


def random_word_swap(caption: tf.Tensor, seed: tf.Tensor, swaps: int) -> tf.Tensor:
    """EDA random swap: exchanges two random words' positions, `swaps` times."""
    words = tf.strings.split(caption)
    n = tf.shape(words, out_type=tf.int64)[0]
    for k in range(swaps):
        ij = tf.random.stateless_uniform([2], _op_seed(seed, 10 + k), maxval=tf.maximum(n, 1),
                                         dtype=tf.int64)  # fmt: skip

        def swap(w=words, ij=ij):
            return tf.tensor_scatter_nd_update(w, ij[:, None], tf.stack([w[ij[1]], w[ij[0]]]))

        words = tf.cond(n > 1, swap, lambda w=words: w)
    return tf.strings.reduce_join(words, separator=" ")
