"""SigLIP 2's objective (models/siglip2.py): the contrastive loss plus its recipe's terms
(LocCa captioning, self-distillation, masked prediction), its EMA teacher updated after
each step; it exports as its two towers."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax

from contrastive_jax.errors import ConfigError
from contrastive_jax.models.siglip2 import towers_only, update_teacher
from contrastive_jax.objectives.base import Aux, Batch, ConfigDict, StepSettings, refuse
from contrastive_jax.objectives.captioning import parallel_examples
from contrastive_jax.objectives.contrastive import Contrastive, contrastive_loss
from contrastive_jax.objectives.draws import VIEWS_STREAM, step_key


class SigLIP2Terms(Contrastive):
    """Two towers, a LocCa decoder and an EMA teacher; zero-shot as two towers."""

    kind = "siglip2"
    takes_microbatches = False  # the terms are not GradCache'd
    takes_cached_images = False  # they run the image tower
    takes_mixup = False
    takes_patches = False  # its decoder and teacher read square images
    plain_towers = False

    def example_draws(self, settings: StepSettings, step: jax.Array,
                      size: int) -> dict[str, jax.Array]:
        return parallel_examples(settings, step, size)

    def loss(self, model: Any, batch: Batch, step: jax.Array, draws: Mapping[str, jax.Array],
             settings: StepSettings) -> tuple[jax.Array, Aux]:
        zimg, ztxt, tokens = model.embed_with_tokens(batch["image"], batch["text"],
                                                     batch.get("mask_noise"))
        zimg, ztxt = settings.split(zimg), settings.split(ztxt)
        loss, aux = contrastive_loss(model, zimg, ztxt, batch, settings)
        # Its self-supervised terms run from step `distill_from`.
        extra, extra_aux = model.recipe_losses(
            batch["image"], batch["text"], tokens, batch["parallel"],
            step >= settings.distill_from, step_key(settings.seed, VIEWS_STREAM, step))
        return loss + extra, {**aux, **extra_aux}

    def after_step(self, rest: dict[str, Any], params: dict[str, Any], stats: Aux,
                   step: jax.Array, settings: StepSettings) -> dict[str, Any] | None:
        """The EMA teacher's update from the new params and the step's "_" statistics."""
        if "teacher" not in rest:
            return None
        return update_teacher(rest, params, stats, step >= settings.distill_from,
                              settings.model_def.abstract)

    def export_params(self, model_config: ConfigDict,
                      params: Mapping[str, Any]) -> tuple[ConfigDict, dict]:
        """Its decoder and teacher are training-only: the towers go out."""
        return towers_only(model_config, params)

    def check_config(self, config: ConfigDict, eval_kinds: Callable[[], set[str]]) -> None:
        """The terms' ranges, and what their decoder and teacher cannot take."""
        model, train = config.model, config.train
        teacher = model.teacher
        conflicts = {
            "train.microbatches": train.microbatches > 1,
            "train.embedding_cache.enabled": train.embedding_cache.enabled,
        }
        if model.locca.enabled:  # the caption loss skips id 0 and keeps a cut caption's EOS
            conflicts.update({"data.pad_id": config.data.pad_id != 0,
                              "data.eos": config.data.eos != "sticky"})
        refuse(conflicts, f"model {model.name!r} (no GradCache or cached images; LocCa needs "
               "pad 0 and sticky EOS)")
        ranges = {
            "locca.parallel_fraction": (model.locca.parallel_fraction, 0.0, 1.0),
            "teacher.start_fraction": (teacher.start_fraction, 0.0, 1.0),
            "teacher.ema": (teacher.ema, 0.0, 1.0),
            "teacher.center_momentum": (teacher.center_momentum, 0.0, 1.0),
            "masked_prediction.ratio": (model.masked_prediction.ratio, 0.0, 1.0),
        }
        for key, (value, low, high) in ranges.items():
            if isinstance(value, bool) or not isinstance(value, int | float) or not (
                    low <= value <= high):
                raise ConfigError(f"config key 'model.{key}' must be in [{low}, {high}], got "
                                  f"{value!r}")
        for key in ("locca.weight", "self_distill.weight", "masked_prediction.weight"):
            group, name = key.split(".")
            if not model[group][name] >= 0:
                raise ConfigError(f"config key 'model.{key}' must be >= 0")
        if not (teacher.student_temp > 0 and teacher.teacher_temp > 0):
            raise ConfigError("config keys 'model.teacher.student_temp' and 'teacher_temp' "
                              "must be > 0")
        low, high = model.self_distill.local_scale
        if not 0 < low <= high <= 1 or model.self_distill.local_views < 1:
            raise ConfigError("config key 'model.self_distill.local_scale' must be (low, "
                              "high) with 0 < low <= high <= 1, and local_views >= 1")
