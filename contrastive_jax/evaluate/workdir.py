"""Evaluate a training workdir's checkpoint with the evaluators of its own config."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

from contrastive_jax.config import (
    ConfigError,
    apply_override,
    default_config,
    merge_into,
    use_model_schema,
)
from contrastive_jax.data.pipeline import text_renderer
from contrastive_jax.data.tokenizer import Tokenizer
from contrastive_jax.evaluate.runner import run_evals
from contrastive_jax.parallel import distributed
from contrastive_jax.parallel.mesh import create_mesh
from contrastive_jax.train.checkpoint import Checkpointer
from contrastive_jax.train.state import ModelDef, weights_state_shapes


def load_workdir_config(workdir: str, overrides: Sequence[str] = ()):
    path = os.path.join(workdir, "config.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{workdir} is not a training workdir: no config.json")
    config = default_config()
    with open(path, encoding="utf-8") as f:
        saved = json.load(f)
    use_model_schema(config, saved.get("model", {}).get("name", config.model.name))
    merge_into(config, saved)
    # How the training job was launched (e.g. process 0's process_id) is not part of the run.
    config.distributed = default_config().distributed
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"override {item!r} is not of the form key=value")
        apply_override(config, key, value)
    return config


def restore_workdir(workdir: str, step: int | None = None, overrides: Sequence[str] = ()):
    """(config, mesh, state, tokenizer) of a workdir's checkpoint `step` (default: latest)."""
    config = load_workdir_config(workdir, overrides)
    distributed.initialize(config)
    mesh = create_mesh(config.mesh)
    shapes, shardings = weights_state_shapes(config, mesh)  # no optimizer state
    checkpointer = Checkpointer(workdir, config)
    try:
        state, _ = checkpointer.restore_weights(shapes, shardings, step=step)
    finally:
        checkpointer.close()
    if config.data.render.enabled:  # CLIPPO: prompts are rendered, nothing to load
        tokenizer = text_renderer(config.data)
    else:
        tokenizer = Tokenizer(os.path.join(workdir, "tokenizer.model"))
    return config, mesh, state, tokenizer


def evaluate_workdir(workdir: str, step: int | None = None,
                     overrides: Sequence[str] = (),
                     details: dict[str, Any] | None = None) -> dict[str, Any]:
    """Restores `step` (default: latest) and returns the configured eval metrics."""
    config, mesh, state, tokenizer = restore_workdir(workdir, step, overrides)
    metrics = run_evals(config, ModelDef(config.model), state, tokenizer, mesh, details)
    return {"step": int(state.step), **metrics}
