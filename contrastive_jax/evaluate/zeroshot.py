"""Zero-shot classification: prompt-ensemble class embeddings against image embeddings, or,
for a captioner (CapPa), each class's prompt log-likelihood given the image, or, for a
synset classifier (CatLIP), the mean logit of each class name's synsets."""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from contrastive_jax.data.nouns import wordnet_synset
from contrastive_jax.evaluate.embed import encode_texts, num_batch_shards, pad_rows
from contrastive_jax.evaluate.prompts import fill
from contrastive_jax.models.state import ModelDef, TrainState
from contrastive_jax.parallel.mesh import process_rows, replicated, to_global


def class_embeddings(model_def: ModelDef, state: TrainState, tokenizer, class_names: Sequence[str],
                     templates: Sequence[str], max_len: int, mesh: Mesh) -> np.ndarray:
    """Mean of each class's prompt embeddings, renormalised: [C, D]."""
    prompts = [fill(template, name) for name in class_names for template in templates]
    tokens = tokenizer.encode_batch(prompts, max_len)
    emb = encode_texts(model_def, state, tokens, mesh).reshape(len(class_names), len(templates), -1)
    emb = emb.mean(axis=1)
    return emb / np.linalg.norm(emb, axis=-1, keepdims=True)


def classifier_of(model_def: ModelDef, state: TrainState, tokenizer,
                  class_names: Sequence[str], templates: Sequence[str], max_len: int,
                  mesh: Mesh) -> np.ndarray:
    """What `zeroshot_accuracy` compares images with: class embeddings [C, D], or for a
    captioner the prompts' token ids [C, T, L], scored by their likelihood."""
    if model_def.objective == "captioning":
        prompts = [fill(template, name) for name in class_names for template in templates]
        tokens = trim_pad_columns(tokenizer.encode_batch(prompts, max_len))
        return tokens.reshape(len(class_names), len(templates), -1)
    if model_def.objective == "classification":  # CatLIP: class names, no prompts
        return tokenizer.class_rows(class_names, wordnet_synset)
    return class_embeddings(model_def, state, tokenizer, class_names, templates, max_len,
                            mesh)


def trim_pad_columns(tokens: np.ndarray) -> np.ndarray:
    """[N, L] right-padded ids without the columns that are pad (0) in every row: causal
    scoring of the rest is unchanged, and the decoder runs on far fewer positions."""
    used = np.flatnonzero((tokens != 0).any(axis=0))
    return tokens[:, : (used[-1] + 1 if used.size else 1)]


@functools.lru_cache(maxsize=8)
def make_eval_batch_fn(model_def: ModelDef, mesh: Mesh, template_average: str = "likelihood"):
    """Jitted: (params, rest, classifier, batch) -> per-class top-1/top-5 hits, per-class
    counts and the [true, predicted] confusion counts of the batch. `template_average`: how a
    captioner's prompt log-likelihoods combine over templates (see CapPa's scoring)."""
    objective = model_def.objective

    def counts(params, rest, classifier, images, labels, mask):
        model = model_def.bind(params, rest)
        if objective == "captioning":  # log-likelihoods of the prompts, averaged over templates
            logits = model.class_log_likelihoods(images, classifier, template_average)
        elif objective == "classification":  # mean logit of each class's synsets
            logits = model.class_scores(images, classifier)
        else:
            logits = model.encode_image(images) @ classifier.T
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
    """`batches` yields global {image, label, mask} batches, the same on every process; each
    process feeds its own slice of each. Returns top1, top5, per-class accuracy and count."""
    fn = make_eval_batch_fn(model_def, mesh, template_average)
    num_classes = classifier.shape[0]
    hit1 = np.zeros(num_classes)
    hit5 = np.zeros(num_classes)
    total = np.zeros(num_classes)
    confusion = np.zeros((num_classes, num_classes), np.int64)
    multiple = num_batch_shards(mesh) * jax.process_count()
    for batch in batches:
        # Padding rows have mask 0, so any batch size splits and counts stay exact.
        local = {"image": batch["image"], "label": batch["label"].astype(np.int32),
                 "mask": batch["mask"].astype(np.float32)}
        local = {k: process_rows(pad_rows(v, multiple)) for k, v in local.items()}
        arrays = to_global(local, mesh)
        h1, h5, n, conf = jax.device_get(fn(state.params, state.rest, jnp.asarray(classifier),
                                      arrays["image"], arrays["label"], arrays["mask"]))
        hit1 += h1
        hit5 += h5
        total += n
        confusion += np.rint(conf).astype(np.int64)
    return {"top1": float(hit1.sum() / total.sum()), "top5": float(hit5.sum() / total.sum()),
            "per_class": hit1 / np.maximum(total, 1), "count": int(total.sum()),
            "confusion": confusion}
