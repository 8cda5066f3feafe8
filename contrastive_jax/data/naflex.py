"""NaFlex preprocessing in TensorFlow: an image at its own aspect ratio -> a padded patch
sequence, exactly as transformers' `Siglip2ImageProcessor` (its Pillow backend) makes it.

1. Size: SigLIP 2's rule, the binary search of transformers'
   `get_image_size_for_max_num_patches` (and big_vision's `resize_to_sequence`): the
   largest scale whose size, each side rounded up to a multiple of the patch (at least
   one patch), has h*w <= the budget of patches.
2. Resize: Pillow's BILINEAR resample (antialiased when shrinking), computed in TF with
   Pillow's own arithmetic (double-precision taps, 22-bit fixed-point weights, a
   pass per axis, each rounded to uint8), so the pixels are equal, not
   merely close (Pillow 13's order of the passes: see `pil_bilinear_resize`).
3. Values: x/255 (in float64, then float32), then (x - mean) / std with the processor's
   mean and std for our value range (lo, hi): mean = -lo/(hi-lo), std = 1/(hi-lo).
4. Patches in (row, column, channel) order, padded to the budget; the mask marks the
   image's own patches; `shape` is its (h, w) grid.

Every op is a TF graph op over dynamic image sizes: the function runs inside tf.data.
"""

from __future__ import annotations

from collections.abc import Sequence

import tensorflow as tf

# The budget check needs no TensorFlow (config checks run without it): it lives in schema.
from contrastive_jax.data.schema import MAX_BUDGET_PER_POSITION, check_budget  # noqa: F401
from contrastive_jax.errors import ConfigError

_PRECISION_BITS = 32 - 8 - 2  # Pillow's fixed-point precision for 8-bit images


def target_size(height: tf.Tensor, width: tf.Tensor, patch: int | tf.Tensor,
                budget: int | tf.Tensor, eps: float = 1e-5) -> tf.Tensor:
    """The (h, w) pixel size an image of `height` x `width` is resized to: int32 [2],
    each a multiple of `patch`, (h/patch) * (w/patch) <= budget (transformers' search,
    in float64 as Python runs it)."""
    hw = tf.cast(tf.stack([height, width]), tf.float64)
    p = tf.cast(patch, tf.float64)
    budget = tf.cast(budget, tf.float64)

    def scaled(scale):
        size = tf.math.ceil(hw * scale / p) * p
        return tf.maximum(size, p)

    def body(lo, hi):
        mid = (lo + hi) / 2
        size = scaled(mid)
        fits = (size[0] / p) * (size[1] / p) <= budget
        return tf.where(fits, mid, lo), tf.where(fits, hi, mid)

    lo, _ = tf.while_loop(lambda lo, hi: hi - lo >= eps, body,
                          (tf.constant(eps / 10, tf.float64), tf.constant(100.0, tf.float64)))
    return tf.cast(scaled(lo), tf.int32)


def _taps(in_size: tf.Tensor, out_size: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """Pillow's `precompute_coeffs` + `normalize_coeffs_8bpc` for the bilinear filter:
    (input indices [out, k] int32, fixed-point weights [out, k] float64 integers)."""
    n_in, n_out = tf.cast(in_size, tf.float64), tf.cast(out_size, tf.float64)
    scale = n_in / n_out
    filterscale = tf.maximum(scale, 1.0)
    support = filterscale  # the bilinear (triangle) filter's support is 1
    ksize = tf.cast(tf.math.ceil(support), tf.int32) * 2 + 1
    center = (tf.range(n_out, dtype=tf.float64) + 0.5) * scale
    # C's (int) truncates toward zero; the clamp at 0 makes it agree with floor here.
    xmin = tf.maximum(tf.floor(center - support + 0.5), 0.0)
    xmax = tf.minimum(tf.floor(center + support + 0.5), n_in) - xmin
    x = tf.range(tf.cast(ksize, tf.float64), dtype=tf.float64)
    arg = tf.abs((x[None, :] + xmin[:, None] - center[:, None] + 0.5) * (1.0 / filterscale))
    w = tf.where(x[None, :] < xmax[:, None], tf.maximum(1.0 - arg, 0.0), 0.0)
    # Pillow sums the taps left to right; floating-point addition is not associative.
    total = tf.foldl(lambda acc, col: acc + col, tf.transpose(w),
                     initializer=tf.zeros_like(center))
    k = tf.math.divide_no_nan(w, total[:, None])
    fixed = tf.floor(0.5 + k * float(1 << _PRECISION_BITS))
    index = tf.minimum(tf.cast(xmin[:, None] + x[None, :], tf.int32), in_size - 1)
    return index, fixed


def _resample_axis(image: tf.Tensor, out_size: tf.Tensor, axis: int) -> tf.Tensor:
    """One Pillow pass along `axis` (0: rows, 1: columns) of a float64 uint8-valued image."""
    index, fixed = _taps(tf.shape(image)[axis], out_size)
    taps = tf.gather(image, index, axis=axis)  # axis -> [out, k]
    weights = fixed[:, :, None, None] if axis == 0 else fixed[None, :, :, None]
    acc = tf.reduce_sum(taps * weights, axis=axis + 1)
    out = tf.floor((acc + float(1 << (_PRECISION_BITS - 1))) / float(1 << _PRECISION_BITS))
    return tf.clip_by_value(out, 0.0, 255.0)


def pil_bilinear_resize(image: tf.Tensor, size: tf.Tensor) -> tf.Tensor:
    """uint8 [H, W, C] -> uint8 [h, w, C], equal to Pillow's `Image.resize((w, h),
    BILINEAR)`. Pillow 13 runs the vertical pass first when the height shrinks by more
    than twice as many pixels as the width (python-pillow/Pillow#9549), else the
    horizontal pass first (as every earlier Pillow does); the order changes the rounding
    of the uint8 intermediate, so it is followed here."""
    x = tf.cast(image, tf.float64)
    shape = tf.shape(image)
    rows_cut, cols_cut = shape[0] - size[0], shape[1] - size[1]
    vertical_first = tf.logical_and(rows_cut > 0, rows_cut > 2 * cols_cut)
    x = tf.cond(
        vertical_first,
        lambda: _resample_axis(_resample_axis(x, size[0], axis=0), size[1], axis=1),
        lambda: _resample_axis(_resample_axis(x, size[1], axis=1), size[0], axis=0))
    return tf.cast(x, tf.uint8)


def naflex_patches(image: tf.Tensor, patch: int, budget: int | tf.Tensor,
                   value_range: Sequence[float] = (-1.0, 1.0)) -> dict[str, tf.Tensor]:
    """uint8 [H, W, C] image -> {"patches": float32 [budget, patch*patch*C],
    "mask": int32 [budget] (1 for the image's patches), "shape": int32 [2] its grid}.
    An image smaller than one patch is enlarged to one patch. `budget` may be a scalar
    int tensor (checked by the caller; the patches' length is then not static)."""
    static = not isinstance(budget, tf.Tensor)
    if static:
        check_budget(budget)
    lo, hi = (float(v) for v in value_range)
    if not hi > lo:
        raise ConfigError(f"value range {value_range!r} must have lo < hi")
    image = tf.convert_to_tensor(image)
    if image.dtype != tf.uint8 or image.shape.rank != 3:
        raise ValueError(f"naflex_patches expects a uint8 [H, W, C] image, got {image.dtype} "
                         f"{image.shape}")
    channels = image.shape[-1]
    shape = tf.shape(image)
    size = target_size(shape[0], shape[1], patch, budget)
    resized = pil_bilinear_resize(image, size)
    x = tf.cast(tf.cast(resized, tf.float64) * (1 / 255), tf.float32)
    mean = tf.constant(-lo / (hi - lo), tf.float32)
    std = tf.constant(1.0 / (hi - lo), tf.float32)
    x = (x - mean) / std
    grid = size // patch
    x = tf.reshape(x, [grid[0], patch, grid[1], patch, channels])
    x = tf.reshape(tf.transpose(x, [0, 2, 1, 3, 4]), [-1, patch * patch * channels])
    n = grid[0] * grid[1]
    patches = tf.pad(x, [[0, budget - n], [0, 0]])
    patches.set_shape([budget if static else None, patch * patch * channels])
    mask = tf.cast(tf.range(budget) < n, tf.int32)
    return {"patches": patches, "mask": mask, "shape": grid}
