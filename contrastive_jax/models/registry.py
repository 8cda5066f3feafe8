"""Model name registry: `config.name` -> (builder, default config).

Adding a model (e.g. CLIPPO's "one_tower") is one call:

    register_model("one_tower", OneTower, default_config=one_tower.default_config)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import ml_collections
from flax import nnx

Builder = Callable[..., nnx.Module]  # builder(config, *, rngs) -> nnx.Module


class _Entry(NamedTuple):
    build: Builder
    default_config: Callable[[], ml_collections.ConfigDict]


_REGISTRY: dict[str, _Entry] = {}


def register_model(name: str, build: Builder, *,
                   default_config: Callable[[], ml_collections.ConfigDict]) -> None:
    """Registers `build(config, *, rngs)` and its full default schema under `name`."""
    if name in _REGISTRY:
        raise ValueError(f"Model {name!r} is already registered.")
    _REGISTRY[name] = _Entry(build, default_config)


def known_models() -> list[str]:
    """Registered model names, sorted."""
    return sorted(_REGISTRY)


def _entry(name: str) -> _Entry:
    if name not in _REGISTRY:
        raise ValueError(f"Unknown model name {name!r}; known models: {known_models()}.")
    return _REGISTRY[name]


def default_model_config(name: str = "two_tower") -> ml_collections.ConfigDict:
    """The full config schema (every accepted key) with defaults for model `name`."""
    cfg = _entry(name).default_config()
    cfg.name = name
    return cfg


def _merge(defaults: ml_collections.ConfigDict, given: Mapping[str, Any], path: str) -> None:
    """Overlays `given` onto `defaults` in place; unknown keys are a ValueError."""
    for key, value in given.items():
        where = f"{path}{key}"
        if key not in defaults:
            raise ValueError(f"Unknown model config key {where!r}; known keys at this level: "
                             f"{sorted(defaults.keys())}.")
        if isinstance(defaults[key], ml_collections.ConfigDict):
            if not isinstance(value, Mapping | ml_collections.ConfigDict):
                raise ValueError(f"Model config {where!r} must be a dict, got {value!r}.")
            _merge(defaults[key], value, where + ".")
        else:
            defaults[key] = value


def complete_config(config: Mapping[str, Any]) -> ml_collections.ConfigDict:
    """Defaults for `config.name` overlaid with `config` (missing keys filled, unknown rejected)."""
    name = config.get("name", "two_tower")
    cfg = default_model_config(name)
    _merge(cfg, config, "")
    return cfg


def create_model(config: Mapping[str, Any], *, rngs: nnx.Rngs) -> nnx.Module:
    """Builds the model named by `config.name` (missing keys take their defaults)."""
    cfg = complete_config(config)
    return _entry(cfg.name).build(cfg, rngs=rngs)
