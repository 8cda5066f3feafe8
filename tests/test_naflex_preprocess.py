"""NaFlex preprocessing (data/naflex.py) equals transformers' Siglip2ImageProcessor (its
Pillow backend) exactly: sizes, resized pixels, values, patch order, padding and mask."""

import numpy as np
import pytest
import tensorflow as tf

from contrastive_jax.data.naflex import (
    check_budget,
    naflex_patches,
    pil_bilinear_resize,
    target_size,
)
from contrastive_jax.errors import ConfigError

Image = pytest.importorskip("PIL.Image")


def _pillow(image, size):
    h, w = size
    pil = Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)
    return np.asarray(pil.resize((w, h), Image.BILINEAR)).reshape(h, w, image.shape[-1])


# Shrinking, enlarging, one axis only, mixed; the last three sit on either side of
# Pillow 13's switch to the vertical pass first (rows cut > 2 x columns cut).
RESIZES = [((37, 53), (16, 24)), ((5, 3), (8, 8)), ((120, 31), (40, 13)), ((31, 120), (9, 97)),
           ((64, 64), (64, 16)), ((64, 64), (16, 64)), ((90, 19), (47, 7)),
           ((100, 100), (50, 75)), ((100, 100), (50, 76)), ((60, 60), (59, 60))]


@pytest.mark.parametrize("channels", [1, 3])
def test_resize_equals_pillow_pixel_for_pixel(channels):
    rng = np.random.default_rng(channels)
    for (h, w), size in RESIZES:
        image = rng.integers(0, 256, (h, w, channels), dtype=np.uint8)
        ours = pil_bilinear_resize(tf.constant(image), tf.constant(size)).numpy()
        np.testing.assert_array_equal(ours, _pillow(image, size), err_msg=f"{(h, w)}->{size}")


def test_size_rule_equals_transformers():
    from transformers.models.siglip2.image_processing_pil_siglip2 import (
        get_image_size_for_max_num_patches,
    )

    rng = np.random.default_rng(0)
    cases = [(1, 1, 16, 256), (7, 2000, 16, 64), (2000, 7, 14, 729), (512, 512, 16, 256)]
    cases += [(*(int(v) for v in rng.integers(1, 1500, 2)), int(rng.choice([4, 14, 16])),
               int(rng.integers(1, 1100))) for _ in range(40)]
    size = tf.function(target_size)  # one trace: every argument a tensor
    for h, w, patch, budget in cases:
        ours = tuple(size(*(tf.constant(v) for v in (h, w, patch, budget))).numpy())
        assert ours == get_image_size_for_max_num_patches(h, w, patch, budget), (h, w, budget)
        assert ours[0] % patch == 0 and ours[1] % patch == 0
        assert (ours[0] // patch) * (ours[1] // patch) <= max(budget, 1)


def _images(rng, channels):
    """Square, 1:3, 3:1, smaller than a patch, and an odd non-square size."""
    shapes = [(48, 48), (30, 90), (90, 30), (3, 5), (41, 67)]
    return [rng.integers(0, 256, (*s, channels), dtype=np.uint8) for s in shapes]


@pytest.mark.parametrize("channels,value_range", [(3, (-1.0, 1.0)), (1, (0.0, 1.0))])
def test_patches_equal_siglip2_image_processor(channels, value_range):
    from transformers import Siglip2ImageProcessor

    lo, hi = value_range
    mean, std = [-lo / (hi - lo)] * channels, [1.0 / (hi - lo)] * channels
    processor = Siglip2ImageProcessor(patch_size=8, image_mean=mean, image_std=std)
    images = _images(np.random.default_rng(channels), channels)
    for budget in (16, 40):
        theirs = processor(images=images, max_num_patches=budget, return_tensors="np",
                           input_data_format="channels_last")
        for i, image in enumerate(images):
            ours = naflex_patches(tf.constant(image), 8, budget, value_range)
            np.testing.assert_array_equal(ours["shape"].numpy(), theirs["spatial_shapes"][i])
            np.testing.assert_array_equal(ours["mask"].numpy(),
                                          theirs["pixel_attention_mask"][i])
            np.testing.assert_array_equal(ours["patches"].numpy(), theirs["pixel_values"][i])


def test_runs_in_tf_data_over_images_of_many_sizes():
    images = _images(np.random.default_rng(5), 3)
    ds = tf.data.Dataset.from_generator(
        lambda: iter(images), output_signature=tf.TensorSpec([None, None, 3], tf.uint8))
    ds = ds.map(lambda x: naflex_patches(x, 8, 24)).batch(len(images))
    batch = next(iter(ds))
    assert batch["patches"].shape == (5, 24, 8 * 8 * 3)
    for i, image in enumerate(images):
        alone = naflex_patches(tf.constant(image), 8, 24)
        for key in ("patches", "mask", "shape"):
            np.testing.assert_array_equal(batch[key][i].numpy(), alone[key].numpy())
    assert batch["mask"].numpy().sum(1).tolist() == [int(np.prod(s)) for s in
                                                     batch["shape"].numpy()]


@pytest.mark.parametrize("budget", [0, -3, 2.5, True])
def test_bad_budget_is_a_config_error(budget):
    with pytest.raises(ConfigError, match="max_num_patches"):
        naflex_patches(tf.zeros([8, 8, 3], tf.uint8), 8, budget)


def test_budget_far_beyond_the_position_table_is_a_config_error():
    assert check_budget(256, grid=4) == 256  # 16 x a 4x4 table: the most allowed
    with pytest.raises(ConfigError, match="16x the model's 4x4 position table"):
        check_budget(257, grid=4)
