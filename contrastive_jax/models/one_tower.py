"""CLIPPO: one ViT encodes both images and captions rendered as images.

Same interface as `TwoTower` (encode_image, encode_text, __call__, temperature, bias), so
the train step, losses, GradCache, zero-shot eval and checkpoints work unchanged; the only
difference is that the "text" input is a rendered image [B, H, W, C] (data.render).

Config schema: as two_tower's without `text`, since the image tower and its projection
head are shared (Tschannen et al. 2023, "CLIPPO: Image-and-Language Understanding from
Pixels Only").
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import ml_collections
from flax import nnx

from contrastive_jax.models import two_tower
from contrastive_jax.models.sizes import resolve_size
from contrastive_jax.models.transformer import parse_dtype
from contrastive_jax.models.two_tower import TwoTower, image_tower, projection_head


def default_config() -> ml_collections.ConfigDict:
    """two_tower's schema minus `text`: one tower, one (optional) head."""
    cfg = two_tower.default_config()
    del cfg["text"]
    cfg.name = "one_tower"
    return cfg


class OneTower(TwoTower):
    """A single ViT (and head) mapping images and rendered text into one embedding space.

    Subclasses `TwoTower` for `encode_image`, `temperature` and `bias`; builds no text tower.
    """

    def __init__(self, config: Mapping[str, Any], *, rngs: nnx.Rngs):
        img = config["image"]
        embed_dim = self._init_scale_and_bias(config)
        size = resolve_size(img, tower="image", with_patch=True)
        self.img = image_tower(config, size, rngs)
        self.img_head = projection_head(size["width"], embed_dim, img["head"],
                                        bool(config["proj_bias"]),
                                        parse_dtype(config["param_dtype"],
                                                    key="model.param_dtype"), rngs)

    def encode_text(self, rendered: jax.Array) -> jax.Array:
        """Rendered captions [B, H, W, C] -> [B, D]: the very same tower as images."""
        return self.encode_image(rendered)

    def __call__(self, images: jax.Array, rendered: jax.Array,
                 mask_noise: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
        """Returns (zimg, ztxt), both [B, D] unit-norm float32; only images are masked."""
        return self.encode_image(images, mask_noise), self.encode_text(rendered)
