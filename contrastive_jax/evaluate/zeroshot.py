"""Zero-shot classification by the model's objective (objectives/): for two towers
prompt-ensemble class embeddings against image embeddings, for other objectives their own
scores (a captioner's prompt log-likelihoods, a synset classifier's mean synset logits)."""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from contrastive_jax.evaluate.embed import batch_images, encode_texts, rows_on_mesh
from contrastive_jax.evaluate.prompts import fill
from contrastive_jax.models.state import ModelDef, TrainState
from contrastive_jax.objectives import objective_of
from contrastive_jax.objectives.captioning import trim_pad_columns
from contrastive_jax.objectives.contrastive import prompt_ensemble
from contrastive_jax.parallel.mesh import replicated

__all__ = ["class_embeddings", "classifier_of", "make_eval_batch_fn", "trim_pad_columns",
           "zeroshot_accuracy"]


def class_embeddings(model_def: ModelDef, state: TrainState, tokenizer, class_names: Sequence[str],
                     templates: Sequence[str], max_len: int, mesh: Mesh) -> np.ndarray:
    """Mean of each class's prompt embeddings, renormalised: [C, D]."""
    prompts = [fill(template, name) for name in class_names for template in templates]
    tokens = tokenizer.encode_batch(prompts, max_len)
    return prompt_ensemble(encode_texts(model_def, state, tokens, mesh), len(class_names))


def classifier_of(model_def: ModelDef, state: TrainState, tokenizer,
                  class_names: Sequence[str], templates: Sequence[str], max_len: int,
                  mesh: Mesh) -> np.ndarray:
    """What `zeroshot_accuracy` compares images with, as the model's objective builds it
    (e.g. class embeddings [C, D], or a captioner's prompt token ids [C, T, L])."""
    prompts = [fill(template, name) for name in class_names for template in templates]
    return objective_of(model_def.name).zeroshot_classifier(
        tokenizer, class_names, prompts, max_len,
        lambda tokens: encode_texts(model_def, state, tokens, mesh))


@functools.lru_cache(maxsize=8)
def make_eval_batch_fn(model_def: ModelDef, mesh: Mesh, template_average: str = "likelihood"):
    """Jitted: (params, rest, classifier, batch) -> per-class top-1/top-5 hits, per-class
    counts and the [true, predicted] confusion counts of the batch. `template_average`: how a
    captioner's prompt log-likelihoods combine over templates (see CapPa's scoring)."""
    objective = objective_of(model_def.name)

    def counts(params, rest, classifier, images, labels, mask):
        model = model_def.bind(params, rest)
        logits = objective.zeroshot_logits(model, images, classifier, template_average)
        top5 = jax.lax.top_k(logits, min(5, classifier.shape[0]))[1]
        hit1 = (top5[:, 0] == labels) * mask
        hit5 = jnp.any(top5 == labels[:, None], axis=-1) * mask
        onehot = jax.nn.one_hot(labels, classifier.shape[0]) * mask[:, None]
        predicted = jax.nn.one_hot(top5[:, 0], classifier.shape[0])
        # Sums over the (sharded) batch: every example counted exactly once, padding never.
        return hit1 @ onehot, hit5 @ onehot, onehot.sum(0), onehot.T @ predicted

    return jax.jit(counts, out_shardings=replicated(mesh))


def zeroshot_accuracy(model_def: ModelDef, state: TrainState, classifier: np.ndarray,
                      batches, mesh: Mesh, template_average: str = "likelihood"
                      ) -> dict[str, float | np.ndarray]:
    """`batches` yields global {image (or NaFlex patches), label, mask} batches, the same on
    every process; each
    process feeds its own slice of each. Returns top1, top5, per-class accuracy and count."""
    fn = make_eval_batch_fn(model_def, mesh, template_average)
    num_classes = classifier.shape[0]
    hit1 = np.zeros(num_classes)
    hit5 = np.zeros(num_classes)
    total = np.zeros(num_classes)
    confusion = np.zeros((num_classes, num_classes), np.int64)
    for batch in batches:
        # Padding rows have mask 0, so any batch size splits and counts stay exact.
        arrays = rows_on_mesh({"image": batch_images(batch),
                               "label": batch["label"].astype(np.int32),
                               "mask": batch["mask"].astype(np.float32)}, mesh)
        h1, h5, n, conf = jax.device_get(fn(state.params, state.rest, jnp.asarray(classifier),
                                      arrays["image"], arrays["label"], arrays["mask"]))
        hit1 += h1
        hit5 += h5
        total += n
        confusion += np.rint(conf).astype(np.int64)
    return {"top1": float(hit1.sum() / total.sum()), "top5": float(hit5.sum() / total.sum()),
            "per_class": hit1 / np.maximum(total, 1), "count": int(total.sum()),
            "confusion": confusion}
