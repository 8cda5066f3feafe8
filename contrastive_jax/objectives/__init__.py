"""Objectives: one module per model type declaring its loss terms, the batch it reads, its
zero-shot scorer, its export and its own config checks; `OBJECTIVES` maps `model.name` to
them. Sits above models/ and losses/, below config, train, evaluate and export."""

from contrastive_jax.objectives.base import Objective, StepSettings
from contrastive_jax.objectives.registry import OBJECTIVES, models_with, objective_of

__all__ = ["OBJECTIVES", "Objective", "StepSettings", "models_with", "objective_of"]
