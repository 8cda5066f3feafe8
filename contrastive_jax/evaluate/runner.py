"""Runs the evaluators a config enables and returns their metrics under the contract's keys."""

from __future__ import annotations

import logging

import ml_collections
from jax.sharding import Mesh

from contrastive_jax.data import pipeline
from contrastive_jax.evaluate import embedding_stats
from contrastive_jax.evaluate.embed import encode_images, encode_texts
from contrastive_jax.evaluate.prompts import get_prompts
from contrastive_jax.evaluate.retrieval import retrieval_recalls
from contrastive_jax.evaluate.zeroshot import class_embeddings, zeroshot_accuracy
from contrastive_jax.filters import default_filters_config
from contrastive_jax.train.state import ModelDef, TrainState

log = logging.getLogger(__name__)


def run_zeroshot(config: ml_collections.ConfigDict, model_def: ModelDef, state: TrainState,
                 tokenizer, mesh: Mesh) -> dict[str, float]:
    zs = config.evals.zeroshot
    data_config = config.data.copy_and_resolve_references()
    data_config.dataset = zs.dataset
    names = pipeline.class_names(zs.dataset, data_config.data_dir)
    classifier = class_embeddings(model_def, state, tokenizer, names, get_prompts(zs.prompts),
                                  config.data.max_len, mesh)
    batches = pipeline.eval_dataset(data_config, split=zs.split,
                                    batch_size=zs.batch_size).as_numpy_iterator()
    result = zeroshot_accuracy(model_def, state, classifier, batches, mesh)
    key = f"zeroshot/{zs.name}"
    log.info("%s: top1 %.4f top5 %.4f on %d images", key, result["top1"], result["top5"],
             result["count"])
    return {f"{key}/top1": result["top1"], f"{key}/top5": result["top5"]}


def heldout_pairs(config: ml_collections.ConfigDict, model_def: ModelDef, state: TrainState,
                  tokenizer, mesh: Mesh, n: int):
    """Embeddings (zimg, ztxt) of `n` held-out image-caption pairs from the zero-shot split."""
    data_config = config.data.copy_and_resolve_references()
    data_config.train_split = config.evals.zeroshot.split
    data_config.flip = False
    # Curation is for training data: held-out pairs are measured as they are (a score file
    # or keep-list of the train split would drop every held-out uid).
    data_config.filters = default_filters_config()
    batch = next(pipeline.train_dataset(data_config, tokenizer, global_batch_size=n,
                                        seed=0).as_numpy_iterator())
    zimg = encode_images(model_def, state, batch["image"], mesh)
    ztxt = encode_texts(model_def, state, batch["text"], mesh)
    return zimg, ztxt


def run_embedding_stats(config: ml_collections.ConfigDict, model_def: ModelDef,
                        state: TrainState, tokenizer, mesh: Mesh) -> dict[str, float]:
    """Alignment and uniformity on held-out image-caption pairs."""
    n = config.evals.embedding_stats.num_examples
    zimg, ztxt = heldout_pairs(config, model_def, state, tokenizer, mesh, n)
    return {
        "embeddings/alignment": embedding_stats.alignment(zimg, ztxt),
        "embeddings/uniformity_image": embedding_stats.uniformity(zimg),
        "embeddings/uniformity_text": embedding_stats.uniformity(ztxt),
    }


def run_retrieval(config: ml_collections.ConfigDict, model_def: ModelDef, state: TrainState,
                  tokenizer, mesh: Mesh) -> dict[str, float]:
    """retrieval/<name>/{i2t,t2i}_r{1,5,10} on held-out image-caption pairs."""
    rc = config.evals.retrieval
    zimg, ztxt = heldout_pairs(config, model_def, state, tokenizer, mesh, rc.num_examples)
    return {f"retrieval/{rc.name}/{k}": v for k, v in retrieval_recalls(zimg, ztxt).items()}


def run_evals(config: ml_collections.ConfigDict, model_def: ModelDef, state: TrainState,
              tokenizer, mesh: Mesh) -> dict[str, float]:
    metrics: dict[str, float] = {}
    if config.evals.zeroshot.enabled:
        metrics.update(run_zeroshot(config, model_def, state, tokenizer, mesh))
    if config.evals.embedding_stats.enabled:
        metrics.update(run_embedding_stats(config, model_def, state, tokenizer, mesh))
    if config.evals.retrieval.enabled:
        metrics.update(run_retrieval(config, model_def, state, tokenizer, mesh))
    return metrics
