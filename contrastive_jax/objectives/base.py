"""The objective interface: what one model type trains on, reads, scores and exports.

A model type is its nnx module (models/), its `MODELS` line, one `Objective` subclass here
and its `OBJECTIVES` line (objectives/registry.py). The train step, the config checks, the
zero-shot evaluator and the exporter ask the objective and never name a model type.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import ml_collections
import numpy as np

from contrastive_jax.errors import ConfigError
from contrastive_jax.losses import LossFn

Batch = dict[str, jax.Array]
Aux = dict[str, jax.Array]
ConfigDict = ml_collections.ConfigDict
# (prompt token ids [N, L]) -> [N, D] unit text embeddings on the host (the evaluator's).
EmbedTexts = Callable[[np.ndarray], np.ndarray]


def _unsharded(x: jax.Array) -> jax.Array:
    return x


@dataclasses.dataclass(frozen=True)
class StepSettings:
    """A run's static step settings, as the step factory hands them to the objective.

    `model_def`: the run's ModelDef (models/), read for its plain attributes only.
    `split`: pins an array's leading axis to the mesh's batch axes (identity without one).
    """

    model_def: Any
    loss_fn: LossFn
    labels_as_positives: bool = False
    cached_image_embeddings: bool = False
    seed: int = 0
    distill_from: int = 0
    mixup: tuple[float, float, float] | None = None
    split: Callable[[jax.Array], jax.Array] = _unsharded


class Objective:
    """One model type's training objective and what the rest of the package asks of it.

    Class attributes declare the data and the step's options it takes; methods compute its
    loss, its zero-shot scores, its export and its own config checks. A subclass overrides
    what differs from these defaults (a contrastive two-tower model on token ids).
    """

    kind = "contrastive"  # named in the step's refusals
    text_input = "tokens"  # batch "text": "tokens" ids | "rendered" images | "synsets" ids
    token_group: str | None = "text"  # the config group whose vocab_size the tokens index
    takes_microbatches = False  # GradCache (train/grad_cache.py) computes its gradient
    takes_cached_images = False  # "image_embedding" in place of "image"
    takes_mixup = False  # ZeroVL's mixup (losses/mixup.py)
    takes_patches = False  # NaFlex patch batches (`data.naflex`) as its image input
    plain_towers = False  # two towers and nothing else (plan's FLOP model, GradCache plans)
    export_refusal: str | None = None  # why no export format holds it; None: it exports

    # --- the train step -------------------------------------------------------------
    def check_step(self, *, microbatches: int, cached_image_embeddings: bool,
                   mixup: bool, labels_as_positives: bool) -> None:
        """ValueError for step options this objective cannot take."""
        if ((microbatches > 1 and not self.takes_microbatches)
                or (cached_image_embeddings and not self.takes_cached_images)):
            raise ValueError(f"a {self.kind} model takes neither micro-batches nor "
                             "cached images")
        if mixup and (not self.takes_mixup or microbatches > 1 or labels_as_positives
                      or cached_image_embeddings):
            raise ValueError("mixup takes a two-tower contrastive step on images and pairs")

    def batch_keys(self, settings: StepSettings) -> tuple[str, ...]:
        """The batch entries the step reads."""
        image = "image_embedding" if settings.cached_image_embeddings else "image"
        return (image, "text", *(("label",) if settings.labels_as_positives else ()))

    def example_draws(self, settings: StepSettings, step: jax.Array,
                      size: int) -> dict[str, jax.Array]:
        """Per-example draws of this step, added to the batch before it is sharded."""
        return {}

    def step_draws(self, settings: StepSettings, step: jax.Array) -> dict[str, jax.Array]:
        """Draws of this step shared by the batch, handed to `loss`."""
        return {}

    def loss(self, model: Any, batch: Batch, step: jax.Array, draws: Mapping[str, jax.Array],
             settings: StepSettings) -> tuple[jax.Array, Aux]:
        """(scalar loss, metrics) of the bound `model` on `batch`; aux keys starting with "_"
        are statistics for `after_step`, not metrics."""
        raise NotImplementedError

    def after_step(self, rest: dict[str, Any], params: dict[str, Any], stats: Aux,
                   step: jax.Array, settings: StepSettings) -> dict[str, Any] | None:
        """The model's new non-trained state after the update (None: unchanged); the step
        keeps the old one when the update is dropped."""
        return None

    # --- evaluation -----------------------------------------------------------------
    def zeroshot_classifier(self, tokenizer: Any, class_names: Sequence[str],
                            prompts: Sequence[str], max_len: int,
                            embed_texts: EmbedTexts) -> np.ndarray:
        """What the images are scored against; `prompts`: every class's templates filled
        in, class-major [C * T]."""
        raise NotImplementedError

    def zeroshot_logits(self, model: Any, images: jax.Array, classifier: jax.Array,
                        template_average: str) -> jax.Array:
        """[B, C] class scores of `images` against `zeroshot_classifier`'s output."""
        raise NotImplementedError

    # --- export ---------------------------------------------------------------------
    def export_params(self, model_config: ConfigDict,
                      params: Mapping[str, Any]) -> tuple[ConfigDict, dict]:
        """(model config, params) that the export formats write."""
        return model_config, dict(params)

    # --- config checks --------------------------------------------------------------
    def check_config(self, config: ConfigDict, eval_kinds: Callable[[], set[str]]) -> None:
        """ConfigErrors for keys this model type cannot take; `eval_kinds()`: the kinds of
        the config's eval tasks."""

    def check_vocab(self, model_config: ConfigDict, text_encoder: Any) -> None:
        """ConfigError if the text encoder's vocabulary (data/tokenizer_setup.py) does not fit
        the model; none to check without a `token_group` (e.g. rendered captions)."""
        if self.token_group is None:
            return
        vocab_size = text_encoder.vocab_size
        model_vocab = model_config[self.token_group].vocab_size
        if vocab_size > model_vocab:
            raise ConfigError(f"tokenizer has {vocab_size} pieces but config key "
                              f"'model.{self.token_group}.vocab_size' is {model_vocab}")


def refuse(conflicts: Mapping[str, bool], what: str) -> None:
    """The first key whose `conflicts` entry is true, as "does not apply to WHAT"."""
    for key, conflict in conflicts.items():
        if conflict:
            raise ConfigError(f"config key {key!r} does not apply to {what}")

