"""Evaluate an exported directory (npz / safetensors) with the evaluators of its run."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp

from contrastive_jax.config import ConfigError, apply_override, default_config, merge_into
from contrastive_jax.data.text_conventions import for_model, split_overrides, use_conventions
from contrastive_jax.evaluate.runner import run_evals
from contrastive_jax.export.native import card_conventions, load_exported
from contrastive_jax.parallel.mesh import create_mesh, replicated
from contrastive_jax.train.state import ModelDef, TrainState

if TYPE_CHECKING:  # the tokenizer loads TensorFlow
    from contrastive_jax.data.tokenizer import Tokenizer


def evaluate_export(export_dir: str, overrides: Sequence[str] = (),
                     details: dict[str, Any] | None = None) -> dict[str, Any]:
    """Loads the export and runs the evals its training config enables (after overrides)."""
    card, params, tokenizer = load_exported(export_dir)
    config = default_config()
    merge_into(config, card["train_config"])
    use_conventions(config, card_conventions(card))  # the card is the record
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"override {item!r} is not of the form key=value")
        apply_override(config, key, value)
    tokenizer = tokenizer.with_conventions(for_model(config))  # --config.data.pad_id=... wins
    mesh = create_mesh(config.mesh)
    model_def = ModelDef(config.model)
    _, rest = ModelDef.init(config.model, jax.random.key(0))
    params = jax.device_put(jax.tree.map(jnp.asarray, params), replicated(mesh))
    state = TrainState(step=jnp.asarray(card["step"], jnp.int32), params=params, rest=rest,
                       opt_state=None)
    metrics = run_evals(config, model_def, state, tokenizer, mesh, details)
    return {"step": int(card["step"]), **metrics}


def big_vision_setup(path: str, config_spec: str, tokenizer_path: str,
                     overrides: Sequence[str] = ()) -> tuple[Any, ModelDef, TrainState,
                                                           Tokenizer, Any]:
    """(config, model_def, state, tokenizer, mesh) to evaluate a big_vision two_towers `.npz`
    with the data/evals of `config_spec`.

    The model config comes from the checkpoint's shapes, the text conventions from
    big_vision's SigLIP (sticky EOS, pad 1, ASCII lowercasing, the checkpoint's max_len);
    `data.pad_id` / `eos` / `lowercase` / `max_len` overrides replace them.
    """
    from contrastive_jax.config import load_config
    from contrastive_jax.export.big_vision import big_vision_model

    text_overrides, others = split_overrides(overrides)
    # The text overrides are applied once the checkpoint's model is in place: a pad id
    # of 1 is valid for its "final" pool, not for the config file's model.
    config = load_config(config_spec, others)
    params, tokenizer = big_vision_model(path, tokenizer_path, config, text_overrides)
    mesh = create_mesh(config.mesh)
    _, rest = ModelDef.init(config.model, jax.random.key(0))
    params = jax.device_put(jax.tree.map(jnp.asarray, params), replicated(mesh))
    state = TrainState(step=jnp.zeros((), jnp.int32), params=params, rest=rest, opt_state=None)
    return config, ModelDef(config.model), state, tokenizer, mesh


def evaluate_big_vision(path: str, config_spec: str, tokenizer_path: str,
                        overrides: Sequence[str] = (),
                        details: dict[str, Any] | None = None) -> dict[str, Any]:
    """Evaluates a big_vision two_towers `.npz` (see `big_vision_setup`) with the evals of
    `config_spec`. Text is padded to the model's max_len with pad 1: big_vision's text
    tower has no pad mask and pools the final position, as it was trained."""
    config, model_def, state, tokenizer, mesh = big_vision_setup(path, config_spec,
                                                                 tokenizer_path, overrides)
    return run_evals(config, model_def, state, tokenizer, mesh, details)
