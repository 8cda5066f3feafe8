"""Models: ViT and text towers, two-tower and one-tower (CLIPPO) models, a name registry."""

from contrastive_jax.models import one_tower, two_tower
from contrastive_jax.models.one_tower import OneTower
from contrastive_jax.models.registry import (
    complete_config,
    create_model,
    default_model_config,
    known_models,
    register_model,
)
from contrastive_jax.models.sizes import SIZES, decode_variant
from contrastive_jax.models.text import TextTransformer
from contrastive_jax.models.two_tower import TwoTower, l2_normalize
from contrastive_jax.models.vit import ViT

register_model("two_tower", TwoTower, default_config=two_tower.default_config)
register_model("one_tower", OneTower, default_config=one_tower.default_config)

__all__ = [
    "SIZES",
    "OneTower",
    "TextTransformer",
    "TwoTower",
    "ViT",
    "complete_config",
    "create_model",
    "decode_variant",
    "default_model_config",
    "known_models",
    "l2_normalize",
    "register_model",
]
