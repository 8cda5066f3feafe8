"""Model registry: the literal table `MODELS` of `config.name` -> (builder, default config).

Adding a model is one entry in `MODELS`: its builder `build(config, *, rngs)` and the
function returning its full default schema (every key the model accepts).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import ml_collections
from flax import nnx

from contrastive_jax.errors import ConfigError
from contrastive_jax.models import cappa, catlip, one_tower, siglip2, two_tower
from contrastive_jax.registry import Registry

DEFAULT_MODEL = "two_tower"  # a config's `model.name` when it names none
Builder = Callable[..., nnx.Module]  # builder(config, *, rngs) -> nnx.Module


class ModelEntry(NamedTuple):
    build: Builder
    default_config: Callable[[], ml_collections.ConfigDict]


MODELS: Registry[ModelEntry] = Registry("model", {
    "two_tower": ModelEntry(two_tower.TwoTower, two_tower.default_config),
    "one_tower": ModelEntry(one_tower.OneTower, one_tower.default_config),
    "cappa": ModelEntry(cappa.CapPa, cappa.default_config),
    "siglip2": ModelEntry(siglip2.SigLIP2, siglip2.default_config),
    "catlip": ModelEntry(catlip.CatLIP, catlip.default_config),
}, config_key="model.name")


def known_models() -> list[str]:
    """Registered model names, sorted."""
    return sorted(MODELS)


def default_model_config(name: str = DEFAULT_MODEL) -> ml_collections.ConfigDict:
    """The full config schema (every accepted key) with defaults for model `name`."""
    cfg = MODELS[name].default_config()
    cfg.name = name
    return cfg


def _merge(defaults: ml_collections.ConfigDict, given: Mapping[str, Any], path: str) -> None:
    """Overlays `given` onto `defaults` in place; an unknown key is a ConfigError."""
    for key, value in given.items():
        where = f"{path}{key}"
        if key not in defaults:
            raise ConfigError(f"unknown config key {where!r}; known keys at this level: "
                              f"{sorted(defaults.keys())}")
        if isinstance(defaults[key], ml_collections.ConfigDict):
            if not isinstance(value, Mapping | ml_collections.ConfigDict):
                raise ConfigError(f"config key {where!r} is a group; got {value!r}")
            _merge(defaults[key], value, where + ".")
        else:
            defaults[key] = value


def complete_config(config: Mapping[str, Any]) -> ml_collections.ConfigDict:
    """Defaults for `config.name` overlaid with `config` (missing keys filled, unknown rejected)."""
    name = config.get("name", DEFAULT_MODEL)
    cfg = default_model_config(name)
    _merge(cfg, config, "model.")
    return cfg


def create_model(config: Mapping[str, Any], *, rngs: nnx.Rngs) -> nnx.Module:
    """Builds the model named by `config.name` (missing keys take their defaults)."""
    cfg = complete_config(config)
    return MODELS[cfg.name].build(cfg, rngs=rngs)
