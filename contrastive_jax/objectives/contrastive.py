"""The contrastive objective of two towers (CLIP, SigLIP, LiT): the configured loss of the
image and text embeddings, with label positives, ZeroVL's mixup, GradCache micro-batches
and cached image embeddings; zero-shot by prompt-ensemble similarity."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np

from contrastive_jax.losses import mixup as zerovl
from contrastive_jax.objectives.base import Aux, Batch, EmbedTexts, Objective, StepSettings
from contrastive_jax.objectives.draws import MIXUP_STREAM, step_key


def contrastive_loss(model: Any, zimg: jax.Array, ztxt: jax.Array, batch: Batch,
                     settings: StepSettings, mix: jax.Array | None = None
                     ) -> tuple[jax.Array, Aux]:
    """`settings.loss_fn` of the embeddings at the model's t and b (mixed: ZeroVL's soft
    targets of `mix`'s target alpha); aux with t and b."""
    t, b = model.temperature(), model.bias()
    labels = batch["label"] if settings.labels_as_positives else None
    if mix is None:
        loss, aux = settings.loss_fn(zimg, ztxt, t, b, labels)
    else:
        loss, aux = zerovl.mixed_loss(settings.loss_fn, zimg, ztxt, t, b, mix[2])
        aux = {**aux, "mixup_alpha": mix[2]}
    return loss, {"t": t, "b": b, **aux}


def prompt_ensemble(embeddings: np.ndarray, num_classes: int) -> np.ndarray:
    """[C * T, D] prompt embeddings (class-major) -> [C, D]: each class's mean, unit-norm."""
    emb = embeddings.reshape(num_classes, -1, embeddings.shape[-1]).mean(axis=1)
    return emb / np.linalg.norm(emb, axis=-1, keepdims=True)


class Contrastive(Objective):
    """Two towers on image-caption pairs (models/two_tower.py)."""

    takes_microbatches = True
    takes_cached_images = True
    takes_mixup = True
    takes_patches = True  # the image goes to the tower whole: a NaFlexImages is one
    plain_towers = True

    def step_draws(self, settings: StepSettings, step: jax.Array) -> dict[str, jax.Array]:
        if settings.mixup is None:
            return {}
        # (image alpha, text alpha, target alpha)
        return {"mix": zerovl.draw(step_key(settings.seed, MIXUP_STREAM, step), *settings.mixup)}

    def loss(self, model: Any, batch: Batch, step: jax.Array, draws: Mapping[str, jax.Array],
             settings: StepSettings) -> tuple[jax.Array, Aux]:
        mix, noise = draws.get("mix"), batch.get("mask_noise")
        if mix is not None:
            images = zerovl.with_partner(batch["image"], mix[0])
            pair = model(images, batch["text"], noise, text_mix=mix[1])
        elif settings.cached_image_embeddings:  # the image tower is not run
            pair = batch["image_embedding"], model.encode_text(batch["text"])
        else:
            pair = model(batch["image"], batch["text"], noise)
        zimg, ztxt = map(settings.split, pair)
        return contrastive_loss(model, zimg, ztxt, batch, settings, mix)

    def zeroshot_classifier(self, tokenizer: Any, class_names: Sequence[str],
                            prompts: Sequence[str], max_len: int,
                            embed_texts: EmbedTexts) -> np.ndarray:
        return prompt_ensemble(embed_texts(tokenizer.encode_batch(prompts, max_len)),
                               len(class_names))

    def zeroshot_logits(self, model: Any, images: jax.Array, classifier: jax.Array,
                        template_average: str) -> jax.Array:
        return model.encode_image(images) @ classifier.T
