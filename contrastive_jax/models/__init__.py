"""Models: ViT and text towers, two-tower and one-tower (CLIPPO) models, CapPa, CatLIP,
SigLIP 2, a name registry, and the train state's structure (`state`: TrainState, ModelDef).

It imports `losses` (the loss terms some models own), `parallel` (the state's shardings) and
the base modules (docs/architecture.md).
"""

from contrastive_jax.models.one_tower import OneTower
from contrastive_jax.models.registry import (
    MODELS,
    complete_config,
    create_model,
    default_model_config,
    known_models,
)
from contrastive_jax.models.sizes import SIZES, decode_variant
from contrastive_jax.models.text import TextTransformer
from contrastive_jax.models.two_tower import TwoTower, l2_normalize
from contrastive_jax.models.vit import ViT

__all__ = [
    "MODELS",
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
]
