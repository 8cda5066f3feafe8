"""SigLIP 2's self-supervised terms (from SILC and TIPS): the student matches an EMA teacher's
prototype distribution, DINO-style, on local views and on masked patches.

Pure functions of arrays: the cross-entropy, the EMA arithmetic, and the random local views
and patch masks, drawn from a key so that a resumed run draws what an unbroken one does.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp


def distill_cross_entropy(student: jax.Array, teacher: jax.Array, center: jax.Array, *,
                          student_temp: float, teacher_temp: float,
                          weights: jax.Array | None = None) -> jax.Array:
    """Mean over the leading dims (weighted by `weights`, if given) of
    -sum_k softmax((teacher - center) / teacher_temp)_k * log_softmax(student / student_temp)_k.

    student, teacher: [..., K] logits of the same shape; center [K]. The teacher side is a
    constant: no gradient reaches it (DINO's centring and sharpening)."""
    target = jax.nn.softmax((teacher.astype(jnp.float32) - center) / teacher_temp, axis=-1)
    target = jax.lax.stop_gradient(target)
    log_p = jax.nn.log_softmax(student.astype(jnp.float32) / student_temp, axis=-1)
    ce = -jnp.sum(target * log_p, axis=-1)
    if weights is None:
        return jnp.mean(ce)
    weights = weights.astype(jnp.float32)
    return jnp.sum(ce * weights) / jnp.maximum(jnp.sum(weights), 1.0)


def ema(teacher: Any, student: Any, momentum: float) -> Any:
    """momentum * teacher + (1 - momentum) * student, leaf by leaf (same tree)."""
    return jax.tree.map(lambda t, s: momentum * t + (1.0 - momentum) * s, teacher, student)


def crop_boxes(key: jax.Array, batch: int, views: int, size: tuple[int, int],
               scale: tuple[float, float]) -> jax.Array:
    """[B, V, 4] boxes (y0, x0, h, w) in pixels: RandomResizedCrop's draw, with the area
    share uniform in `scale` and the aspect ratio log-uniform in [3/4, 4/3]."""
    height, width = size
    u = jax.random.uniform(key, (batch, views, 4))
    area = (scale[0] + (scale[1] - scale[0]) * u[..., 0]) * height * width
    aspect = jnp.exp(math.log(3 / 4) + math.log(16 / 9) * u[..., 1])
    h = jnp.clip(jnp.sqrt(area / aspect), 1.0, height)
    w = jnp.clip(jnp.sqrt(area * aspect), 1.0, width)
    return jnp.stack([u[..., 2] * (height - h), u[..., 3] * (width - w), h, w], axis=-1)


def crop_and_resize(images: jax.Array, boxes: jax.Array,
                    size: tuple[int, int] | None = None) -> jax.Array:
    """images [B, H, W, C], boxes [B, V, 4] -> [B, V, h, w, C]: each box resized (bilinear,
    antialiased) to `size` (default: the images' own), as DINO's small local crops."""
    height, width = size or images.shape[1:3]

    def one(image: jax.Array, box: jax.Array) -> jax.Array:
        y0, x0, h, w = box
        scale = jnp.stack([height / h, width / w])
        return jax.image.scale_and_translate(
            image, (height, width, image.shape[-1]), (0, 1), scale,
            -jnp.stack([y0, x0]) * scale, method="linear")

    per_view = jax.vmap(one, in_axes=(None, 0))
    return jax.vmap(per_view)(images.astype(jnp.float32), boxes).astype(images.dtype)


def local_views(key: jax.Array, images: jax.Array, views: int, scale: tuple[float, float],
                size: tuple[int, int] | None = None) -> jax.Array:
    """[B, V, h, w, C]: `views` random crops of each image (see `crop_boxes`), resized to
    `size` (default: the images' size)."""
    boxes = crop_boxes(key, images.shape[0], views, images.shape[1:3], scale)
    return crop_and_resize(images, boxes, size)


def patch_mask(key: jax.Array, batch: int, patches: int, ratio: float) -> jax.Array:
    """[B, N] bool: exactly int(N * ratio) patches per image, chosen uniformly."""
    noise = jax.random.uniform(key, (batch, patches))
    rank = jnp.argsort(jnp.argsort(noise, axis=1), axis=1)
    return rank < int(patches * ratio)
