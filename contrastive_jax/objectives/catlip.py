"""CatLIP's objective (models/catlip.py): multi-label synset classification of the image,
the batch's "text" being synset ids; zero-shot by each class name's mean synset logit."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import numpy as np

from contrastive_jax.data.nouns import wordnet_synset
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


class SynsetClassification(Objective):
    """An image tower and a synset head, no text tower, no pairs."""

    kind = "classification"
    text_input = "synsets"  # 1-based synset ids, 0-padded (data/synsets.py's labeller)
    token_group = None
    export_refusal = "it has a synset head instead of a text tower"

    def batch_keys(self, settings: StepSettings) -> tuple[str, ...]:
        return ("image", "text")

    def loss(self, model: Any, batch: Batch, step: jax.Array, draws: Mapping[str, jax.Array],
             settings: StepSettings) -> tuple[jax.Array, Aux]:
        return model.classification_loss(batch["image"], batch["text"], batch.get("mask_noise"))

    def zeroshot_classifier(self, tokenizer: Any, class_names: Sequence[str],
                            prompts: Sequence[str], max_len: int,
                            embed_texts: EmbedTexts) -> np.ndarray:
        """[C, num_synsets]: each class name's synsets (prompts are not used)."""
        return tokenizer.class_rows(class_names, wordnet_synset)

    def zeroshot_logits(self, model: Any, images: jax.Array, classifier: jax.Array,
                        template_average: str) -> jax.Array:
        return model.class_scores(images, classifier)  # mean logit of each class's synsets

    def check_config(self, config: ConfigDict, eval_kinds: Callable[[], set[str]]) -> None:
        synsets, train = config.data.synsets, config.train
        if not isinstance(synsets.min_count, int) or synsets.min_count < 1:
            raise ConfigError("config key 'data.synsets.min_count' must be a positive integer")
        if not isinstance(synsets.max_size, int) or synsets.max_size < 0:
            raise ConfigError("config key 'data.synsets.max_size' must be an integer >= 0")
        conflicts = {
            "data.render.enabled": config.data.render.enabled,
            "train.microbatches": train.microbatches > 1,
            "train.embedding_cache.enabled": train.embedding_cache.enabled,
            "train.cit.enabled": train.cit.enabled,
            "train.mixup.enabled": train.mixup.enabled,
            "loss.positives": config.loss.positives != "pairs",
            "evals retrieval and embedding_stats tasks": bool(
                {"retrieval", "embedding_stats"} & eval_kinds()),
        }
        refuse(conflicts, f"model {config.model.name!r} (an image tower classifying "
               "synsets: no text tower, no pairs)")

    def check_vocab(self, model_config: ConfigDict, text_encoder: Any) -> None:
        """The head's rows are the vocabulary's synsets: the sizes must match."""
        vocab_size = text_encoder.vocab_size
        if vocab_size != model_config.head.num_synsets:
            raise ConfigError(f"config key 'model.head.num_synsets' is "
                              f"{model_config.head.num_synsets} but the synset vocabulary "
                              f"has {vocab_size} synsets")
