"""Evaluate a training workdir's checkpoint with the evaluators of its own config."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import ml_collections

from contrastive_jax.data.render_text import TextRenderer
from contrastive_jax.data.text_conventions import for_model
from contrastive_jax.data.text_encoder import text_renderer
from contrastive_jax.data.tokenizer import Tokenizer
from contrastive_jax.evaluate.runner import run_evals
from contrastive_jax.train.checkpoint import restore_weights
from contrastive_jax.train.state import ModelDef


def workdir_tokenizer(config: ml_collections.ConfigDict,
                      workdir: str) -> Tokenizer | TextRenderer:
    """What turned the run's captions into model input: its sentencepiece model under the
    run's text conventions (pad id, EOS rule, lowercasing, max_len; a workdir from before
    they were recorded gets pad 0 and sticky EOS), or the text renderer (CLIPPO: prompts
    are rendered, nothing to load)."""
    if config.data.render.enabled:
        return text_renderer(config.data)
    return Tokenizer(os.path.join(workdir, "tokenizer.model"), for_model(config))


def evaluate_workdir(workdir: str, step: int | None = None,
                     overrides: Sequence[str] = (),
                     details: dict[str, Any] | None = None) -> dict[str, Any]:
    """Restores `step` (default: latest) and returns the configured eval metrics."""
    config, mesh, state = restore_weights(workdir, step, overrides=overrides)
    metrics = run_evals(config, ModelDef(config.model), state, workdir_tokenizer(config, workdir),
                        mesh, details)
    return {"step": int(state.step), **metrics}
