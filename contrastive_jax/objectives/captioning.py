"""CapPa's objective (models/cappa.py): the caption loss of (image, caption tokens), part of
the batch predicted in parallel; zero-shot by each class prompt's log-likelihood."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import numpy as np

from contrastive_jax.errors import ConfigError
from contrastive_jax.objectives.base import (
    Aux,
    Batch,
    ConfigDict,
    EmbedTexts,
    Objective,
    StepSettings,
    refuse,
)
from contrastive_jax.objectives.draws import parallel_draw


def trim_pad_columns(tokens: np.ndarray) -> np.ndarray:
    """[N, L] right-padded ids without the columns that are pad (0) in every row: causal
    scoring of the rest is unchanged, and the decoder runs on far fewer positions."""
    used = np.flatnonzero((tokens != 0).any(axis=0))
    return tokens[:, : (used[-1] + 1 if used.size else 1)]


def parallel_examples(settings: StepSettings, step: jax.Array,
                      size: int) -> dict[str, jax.Array]:
    """The batch's "parallel" draw: which examples the decoder predicts in parallel."""
    fraction = settings.model_def.parallel_fraction
    return {"parallel": parallel_draw(settings.seed, step, size, fraction)}


class Captioning(Objective):
    """An image encoder and a caption decoder, no text tower."""

    kind = "captioning"
    token_group = "decoder"
    export_refusal = "it has a caption decoder instead of a text tower"

    def batch_keys(self, settings: StepSettings) -> tuple[str, ...]:
        return ("image", "text")

    def example_draws(self, settings: StepSettings, step: jax.Array,
                      size: int) -> dict[str, jax.Array]:
        return parallel_examples(settings, step, size)

    def loss(self, model: Any, batch: Batch, step: jax.Array, draws: Mapping[str, jax.Array],
             settings: StepSettings) -> tuple[jax.Array, Aux]:
        return model.caption_loss(batch["image"], batch["text"], batch["parallel"],
                                  batch.get("mask_noise"))

    def zeroshot_classifier(self, tokenizer: Any, class_names: Sequence[str],
                            prompts: Sequence[str], max_len: int,
                            embed_texts: EmbedTexts) -> np.ndarray:
        """The prompts' token ids [C, T, L], scored by their likelihood."""
        tokens = trim_pad_columns(tokenizer.encode_batch(prompts, max_len))
        return tokens.reshape(len(class_names), -1, tokens.shape[-1])

    def zeroshot_logits(self, model: Any, images: jax.Array, classifier: jax.Array,
                        template_average: str) -> jax.Array:
        # Log-likelihoods of the prompts, combined over templates.
        return model.class_log_likelihoods(images, classifier, template_average)

    def check_config(self, config: ConfigDict, eval_kinds: Callable[[], set[str]]) -> None:
        """What needs a text tower is refused; the caption loss skips pad id 0."""
        decoder, train = config.model.decoder, config.train
        conflicts = {
            "data.pad_id": config.data.pad_id != 0,  # the caption loss skips id 0
            "data.eos": config.data.eos != "sticky",  # a cut caption keeps its EOS
            "train.microbatches": train.microbatches > 1,
            "train.embedding_cache.enabled": train.embedding_cache.enabled,
            "train.cit.enabled": train.cit.enabled,
            "evals retrieval and embedding_stats tasks": bool(
                {"retrieval", "embedding_stats"} & eval_kinds()),
        }
        refuse(conflicts, f"model {config.model.name!r} (a captioner with no text tower; "
               "pad 0, sticky EOS, no GradCache)")
        if config.data.max_len > decoder.max_len:
            raise ConfigError(f"config key 'data.max_len' ({config.data.max_len}) exceeds "
                              f"'model.decoder.max_len' ({decoder.max_len})")
