"""Locked parameters (LiT): regexes on '/'-joined param paths split params in two.

A locked parameter gets no optimizer state, no weight decay and no gradient: the step
differentiates only the trainable sub-dict and passes the locked one in as a constant
(see train/step.py), so XLA never builds the locked part's backward pass.

Paths are those of `state.params`, e.g. `img/encoder/blocks/0/mlp/fc1/kernel`,
`img_head/kernel`, `txt/embedding/embedding`, `t_log`, `b`. `re.search` semantics: anchor
with `^` to match from the start. `train.locked.image` / `train.locked.text` are shorthands
for the tower's patterns below: the tower, and its projection head when the model has one
(SigLIP's MAP image tower has none); t and b stay trainable.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import ml_collections

from contrastive_jax.errors import ConfigError

TOWER_PATTERNS = {"image": (r"^img/", r"^img_head/"), "text": (r"^txt/", r"^txt_head/")}

Params = dict[Any, Any]


def lock_patterns(lock_config: ml_collections.ConfigDict) -> tuple[str, ...]:
    """The regexes of a `train.locked` config group: tower shorthands first, then `patterns`."""
    patterns = []
    for tower in ("image", "text"):
        if lock_config[tower]:
            patterns += TOWER_PATTERNS[tower]
    patterns += list(lock_config.patterns)
    return tuple(patterns)


def is_locked(name: str, patterns: Sequence[str]) -> bool:
    return any(re.search(p, name) for p in patterns)


def split_params(params: Mapping, patterns: Sequence[str], prefix: str = "") -> tuple[Params,
                                                                                      Params]:
    """(trainable, locked) nested dicts; each holds only its own leaves (no empty groups)."""
    trainable: Params = {}
    locked: Params = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            t, lk = split_params(value, patterns, name + "/")
            if t:
                trainable[key] = t
            if lk:
                locked[key] = lk
        elif patterns and is_locked(name, patterns):
            locked[key] = value
        else:
            trainable[key] = value
    return trainable, locked


def merge_params(a: Mapping, b: Mapping) -> Params:
    """Union of two disjoint nested dicts (inverse of `split_params`)."""
    out = dict(a)
    for key, value in b.items():
        if key in out:
            if not (isinstance(out[key], Mapping) and isinstance(value, Mapping)):
                raise ValueError(f"parameter {key!r} is in both halves of a split")
            out[key] = merge_params(out[key], value)
        else:
            out[key] = value
    return out


def param_names(params: Mapping, prefix: str = "") -> list[str]:
    """'/'-joined names of every leaf."""
    names = []
    for key, value in params.items():
        name = f"{prefix}{key}"
        names += param_names(value, name + "/") if isinstance(value, Mapping) else [name]
    return names


def check_lock(params: Mapping, lock_config: ml_collections.ConfigDict) -> None:
    """One-line ConfigError for a `train.locked` group this model cannot take.

    A tower shorthand needs the tower (its first pattern) and locks the head only where the
    model has one; each explicit pattern must be a valid regex matching some parameter.
    """
    names = param_names(params)
    for tower in ("image", "text"):
        body = TOWER_PATTERNS[tower][0]
        if lock_config[tower] and not any(re.search(body, n) for n in names):
            raise ConfigError(f"config key 'train.locked.{tower}': this model has no {tower} "
                              f"tower (no parameter matches {body!r})")
    check_patterns(params, tuple(lock_config.patterns))
    patterns = lock_patterns(lock_config)
    if patterns and all(is_locked(n, patterns) for n in names):
        raise ConfigError("config key 'train.locked' locks every parameter; nothing would "
                          "train")


def check_patterns(params: Mapping, patterns: Sequence[str],
                   what: str = "train.locked.patterns") -> None:
    """One-line ConfigError for an invalid regex, one matching nothing, or a full lock."""
    names = param_names(params)
    for p in patterns:
        try:
            regex = re.compile(p)
        except re.error as e:
            raise ConfigError(f"config key '{what}': bad regex {p!r}: {e}") from e
        if not any(regex.search(n) for n in names):
            raise ConfigError(f"config key '{what}': pattern {p!r} matches no parameter "
                             f"(names look like {names[0]!r})")
    if patterns and all(is_locked(n, patterns) for n in names):
        raise ConfigError(f"config key '{what}' locks every parameter; nothing would train")
