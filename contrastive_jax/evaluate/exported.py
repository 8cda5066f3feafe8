"""Evaluate an exported directory (npz / safetensors) with the evaluators of its run."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp

from contrastive_jax.config import ConfigError, apply_override, default_config, merge_into
from contrastive_jax.evaluate.runner import run_evals
from contrastive_jax.export.native import load_exported
from contrastive_jax.parallel.mesh import create_mesh, replicated
from contrastive_jax.train.state import ModelDef, TrainState


def evaluate_export(export_dir: str, overrides: Sequence[str] = (),
                     details: dict[str, Any] | None = None) -> dict[str, Any]:
    """Loads the export and runs the evals its training config enables (after overrides)."""
    card, params, tokenizer = load_exported(export_dir)
    config = default_config()
    merge_into(config, card["train_config"])
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"override {item!r} is not of the form key=value")
        apply_override(config, key, value)
    mesh = create_mesh(config.mesh)
    model_def = ModelDef(config.model)
    _, rest = ModelDef.init(config.model, jax.random.key(0))
    params = jax.device_put(jax.tree.map(jnp.asarray, params), replicated(mesh))
    state = TrainState(step=jnp.asarray(card["step"], jnp.int32), params=params, rest=rest,
                       opt_state=None)
    metrics = run_evals(config, model_def, state, tokenizer, mesh, details)
    return {"step": int(card["step"]), **metrics}


def evaluate_big_vision(path: str, config_spec: str, tokenizer_path: str,
                        overrides: Sequence[str] = (),
                        details: dict[str, Any] | None = None) -> dict[str, Any]:
    """Evaluates a big_vision two_towers `.npz` with the data/evals of `config_spec`.

    The model config comes from the checkpoint's shapes. Text is padded to the model's
    max_len: big_vision's text tower pools the final position, as it was trained.
    """
    from contrastive_jax.config import load_config
    from contrastive_jax.data.tokenizer import Tokenizer
    from contrastive_jax.export.big_vision import load_big_vision
    from contrastive_jax.models import complete_config

    model, params = load_big_vision(path)
    config = load_config(config_spec, list(overrides))
    config.model = complete_config(model)
    config.data.max_len = model["text"]["max_len"]
    tokenizer = Tokenizer(tokenizer_path)
    mesh = create_mesh(config.mesh)
    _, rest = ModelDef.init(config.model, jax.random.key(0))
    params = jax.device_put(jax.tree.map(jnp.asarray, params), replicated(mesh))
    state = TrainState(step=jnp.zeros((), jnp.int32), params=params, rest=rest, opt_state=None)
    return run_evals(config, ModelDef(config.model), state, tokenizer, mesh, details)
