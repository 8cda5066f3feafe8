"""The literal table `OBJECTIVES` of `model.name` -> its objective (objectives/base.py).

Adding a model type is its nnx module and `MODELS` line (models/registry.py), its objective
module here and one line below.
"""

from __future__ import annotations

from collections.abc import Callable

from contrastive_jax.objectives.base import Objective
from contrastive_jax.objectives.captioning import Captioning
from contrastive_jax.objectives.catlip import SynsetClassification
from contrastive_jax.objectives.contrastive import Contrastive
from contrastive_jax.objectives.one_tower import RenderedText
from contrastive_jax.objectives.siglip2 import SigLIP2Terms
from contrastive_jax.registry import Registry

OBJECTIVES: Registry[Objective] = Registry("model", {
    "two_tower": Contrastive(),
    "one_tower": RenderedText(),
    "cappa": Captioning(),
    "siglip2": SigLIP2Terms(),
    "catlip": SynsetClassification(),
}, config_key="model.name")


def objective_of(name: str) -> Objective:
    """The objective of model `name` (a ConfigError naming 'model.name' if unknown)."""
    return OBJECTIVES[name]


def models_with(predicate: Callable[[Objective], bool]) -> list[str]:
    """The registered model names whose objective satisfies `predicate`, in table order."""
    return [name for name, objective in OBJECTIVES.items() if predicate(objective)]
