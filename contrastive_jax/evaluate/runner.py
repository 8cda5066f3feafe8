"""Runs the evaluators a config enables and returns their metrics under the contract's keys.

`EVALUATORS` is the literal table of evaluator kinds, one per `evals.<kind>` group. Each is
built the same way (big_vision's evaluators/common.py): a function of the run's config, the
model, its state, the tokenizer and the mesh, returning scalar metrics `<kind>/<name>/...`
and adding what the report needs to `details` when given.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import ml_collections
import numpy as np
from jax.sharding import Mesh

from contrastive_jax.data.eval_data import eval_dataset
from contrastive_jax.data.multi_caption import flatten_captions, iter_multi_caption
from contrastive_jax.data.schema import default_data_config
from contrastive_jax.data.stream import train_dataset
from contrastive_jax.datasets.catalogue import class_names
from contrastive_jax.evaluate import embedding_stats
from contrastive_jax.evaluate.embed import encode_images, encode_texts
from contrastive_jax.evaluate.fewshot import run_fewshot
from contrastive_jax.evaluate.prompts import get_prompts
from contrastive_jax.evaluate.retrieval import retrieval_recalls
from contrastive_jax.evaluate.zeroshot import class_embeddings, zeroshot_accuracy
from contrastive_jax.filters import default_filters_config
from contrastive_jax.registry import Registry
from contrastive_jax.train.state import ModelDef, TrainState

log = logging.getLogger(__name__)


def run_zeroshot(config: ml_collections.ConfigDict, model_def: ModelDef, state: TrainState,
                 tokenizer, mesh: Mesh, details: dict[str, Any] | None = None) -> dict[str, float]:
    """zeroshot/<name>/{top1,top5}; `details` (if given) also gets per-class accuracy and the
    confusion matrix, which are too many numbers for metrics.jsonl at every eval."""
    zs = config.evals.zeroshot
    data_config = config.data.copy_and_resolve_references()
    data_config.dataset = zs.dataset
    names = class_names(zs.dataset, data_config.data_dir, data_config.label_key)
    classifier = class_embeddings(model_def, state, tokenizer, names, get_prompts(zs.prompts),
                                  config.data.max_len, mesh)
    batches = eval_dataset(data_config, split=zs.split,
                           batch_size=zs.batch_size).as_numpy_iterator()
    result = zeroshot_accuracy(model_def, state, classifier, batches, mesh)
    key = f"zeroshot/{zs.name}"
    log.info("%s: top1 %.4f top5 %.4f on %d images", key, result["top1"], result["top5"],
             result["count"])
    if details is not None:
        details.setdefault("zeroshot", {})[zs.name] = {
            "class_names": list(names), "count": result["count"],
            "per_class": {n: float(a) for n, a in zip(names, result["per_class"], strict=True)},
            "confusion": result["confusion"].tolist()}
    return {f"{key}/top1": result["top1"], f"{key}/top5": result["top5"]}


def heldout_pairs(config: ml_collections.ConfigDict, model_def: ModelDef, state: TrainState,
                  tokenizer, mesh: Mesh, n: int):
    """Embeddings (zimg, ztxt) of `n` held-out image-caption pairs from the zero-shot split."""
    data_config = config.data.copy_and_resolve_references()
    data_config.sources = ()  # the zero-shot split, whatever the training sources are
    data_config.dataset = config.evals.zeroshot.dataset
    data_config.train_split = config.evals.zeroshot.split
    data_config.flip = False
    data_config.augment = default_data_config().augment
    data_config.render.text_pair_fraction = 0.0  # real image-caption pairs only (CLIPPO)
    # Curation is for training data: held-out pairs are measured as they are (a score file
    # or keep-list of the train split would drop every held-out uid).
    data_config.filters = default_filters_config()
    batch = next(train_dataset(data_config, tokenizer, global_batch_size=n,
                               seed=0).as_numpy_iterator())
    zimg = encode_images(model_def, state, batch["image"], mesh)
    ztxt = encode_texts(model_def, state, batch["text"], mesh)
    return zimg, ztxt


def run_embedding_stats(config: ml_collections.ConfigDict, model_def: ModelDef,
                        state: TrainState, tokenizer, mesh: Mesh,
                        details: dict[str, Any] | None = None) -> dict[str, float]:
    """Alignment and uniformity on held-out image-caption pairs."""
    n = config.evals.embedding_stats.num_examples
    zimg, ztxt = heldout_pairs(config, model_def, state, tokenizer, mesh, n)
    return {
        "embeddings/alignment": embedding_stats.alignment(zimg, ztxt),
        "embeddings/uniformity_image": embedding_stats.uniformity(zimg),
        "embeddings/uniformity_text": embedding_stats.uniformity(ztxt),
    }


def multi_caption_embeddings(config: ml_collections.ConfigDict, model_def: ModelDef,
                             state: TrainState, tokenizer, mesh: Mesh):
    """(zimg [N, D], ztxt [M, D], image index of each caption [M]) of `evals.retrieval`'s
    dataset: every caption of every image (up to num_examples images; 0 = all)."""
    rc = config.evals.retrieval
    zimg, ztxt, owner, offset = [], [], [], 0
    for images, captions in iter_multi_caption(config.data, rc.dataset, rc.split,
                                               rc.captions_key, rc.num_examples):
        texts, image_index = flatten_captions(captions)
        zimg.append(encode_images(model_def, state, images, mesh))
        ztxt.append(encode_texts(model_def, state,
                                 tokenizer.encode_batch(texts, config.data.max_len), mesh))
        owner.append(image_index + offset)
        offset += len(images)
    return np.concatenate(zimg), np.concatenate(ztxt), np.concatenate(owner)


def run_retrieval(config: ml_collections.ConfigDict, model_def: ModelDef, state: TrainState,
                  tokenizer, mesh: Mesh, details: dict[str, Any] | None = None
                  ) -> dict[str, float]:
    """retrieval/<name>/{i2t,t2i}_r{1,5,10}: on held-out pairs, or with every caption of a
    multi-caption dataset (COCO protocol) when `evals.retrieval.dataset` is set."""
    rc = config.evals.retrieval
    if rc.dataset:
        zimg, ztxt, owner = multi_caption_embeddings(config, model_def, state, tokenizer, mesh)
        log.info("retrieval/%s: %d images, %d captions", rc.name, len(zimg), len(ztxt))
    else:
        zimg, ztxt = heldout_pairs(config, model_def, state, tokenizer, mesh, rc.num_examples)
        owner = None
    recalls = retrieval_recalls(zimg, ztxt, chunk=rc.chunk, text_image=owner)
    return {f"retrieval/{rc.name}/{k}": v for k, v in recalls.items()}


# (config, model_def, state, tokenizer, mesh, details) -> {metric key: value}
Evaluator = Callable[..., dict[str, float]]

EVALUATORS: Registry[Evaluator] = Registry("evaluator", {
    "zeroshot": run_zeroshot,
    "embedding_stats": run_embedding_stats,
    "retrieval": run_retrieval,
    "fewshot": run_fewshot,
}, config_key="evals")


def run_evals(config: ml_collections.ConfigDict, model_def: ModelDef, state: TrainState,
              tokenizer, mesh: Mesh, details: dict[str, Any] | None = None) -> dict[str, float]:
    """Scalar metrics of every enabled evaluator; `details` collects per-class accuracies,
    confusion matrices and per-seed few-shot results for the eval report."""
    metrics: dict[str, float] = {}
    for kind in EVALUATORS:  # the table's order: zero-shot first, as the logs always had it
        if config.evals[kind].enabled:
            metrics.update(EVALUATORS[kind](config, model_def, state, tokenizer, mesh, details))
    return metrics
