"""Evaluate any model SPEC (workdir, export, big_vision) on its tasks or a suite's."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from contrastive_jax.evaluate.runner import run_evals
from contrastive_jax.export.model_spec import LoadedModel, load_model


def evaluate_loaded(model: LoadedModel, details: dict[str, Any] | None = None
                    ) -> dict[str, Any]:
    """{"step", every task's metrics, "suite/mean"} of a loaded model."""
    metrics = run_evals(model.config, model.model_def, model.state, model.text_encoder,
                        model.mesh, details)
    return {"step": model.step, **metrics}


def evaluate_model(spec: str, *, step: int | None = None, tokenizer: str | None = None,
                   config: str | None = None, overrides: Sequence[str] = (),
                   details: dict[str, Any] | None = None) -> dict[str, Any]:
    """Loads `spec` (see `export.model_spec.load_model`) and evaluates it."""
    model = load_model(spec, step=step, tokenizer=tokenizer, config=config,
                       overrides=overrides)
    return evaluate_loaded(model, details)
