"""Runs a config's evaluation tasks and returns their metrics under the contract's keys.

Every task of `evals.tasks` (a NaFlex model's zeroshot / fewshot tasks once per patch
budget, `config.eval_budgets`) is built the same way (big_vision's
evaluators/common.py): `TASK_KINDS[kind](task, config, model_def, state, tokenizer, mesh,
details)` returns scalar metrics `<kind>/<name>/<metric>`. `suite/mean` is the mean of the
tasks' headline metrics. `details` (when given) collects what the report needs.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import ml_collections
import numpy as np
from jax.sharding import Mesh

from contrastive_jax.config.eval_budgets import at_budgets, naflex_reading
from contrastive_jax.config.eval_tasks import due, headline_key, tasks_of
from contrastive_jax.data.filters import default_filters_config
from contrastive_jax.data.labelled import LabelledImages, data_config_for, open_labelled
from contrastive_jax.data.multi_caption import flatten_captions, iter_multi_caption
from contrastive_jax.data.schema import default_data_config
from contrastive_jax.data.stream import train_dataset
from contrastive_jax.evaluate import embedding_stats
from contrastive_jax.evaluate.class_names import task_class_names, task_prompts
from contrastive_jax.evaluate.embed import encode_images, encode_texts
from contrastive_jax.evaluate.fewshot import run_fewshot_task
from contrastive_jax.evaluate.retrieval import retrieval_recalls
from contrastive_jax.evaluate.zeroshot import classifier_of, zeroshot_accuracy
from contrastive_jax.models.state import ModelDef, TrainState
from contrastive_jax.registry import Registry

log = logging.getLogger(__name__)


def report_undecodable(task: dict[str, Any], images: LabelledImages) -> dict[str, float]:
    """`<kind>/<name>/undecodable`: images that failed to decode, named in the log."""
    bad = images.undecodable
    if bad:
        shown = ", ".join(images.describe(i) for i in bad[:3])
        log.warning("%s: %d of %d images did not decode and were not scored (%s%s)",
                    images.where, len(bad), len(images), shown, ", ..." if len(bad) > 3 else "")
    return {f"{task['kind']}/{task['name']}/undecodable": float(len(bad))}


def run_zeroshot_task(task: dict[str, Any], config: ml_collections.ConfigDict,
                      model_def: ModelDef, state: TrainState, tokenizer, mesh: Mesh,
                      details: dict[str, Any] | None = None) -> dict[str, float]:
    """zeroshot/<name>/{top1,top5,undecodable}; `details` also gets per-class accuracy and
    the confusion matrix, which are too many numbers for metrics.jsonl at every eval."""
    where = f"zeroshot task {task['name']!r}"
    images = open_labelled(task["data"], data_config_for(config, task["data"]), where)
    names = task_class_names(task, images, where)
    classifier = classifier_of(model_def, state, tokenizer, names, task_prompts(task),
                               config.data.max_len, mesh)
    result = zeroshot_accuracy(model_def, state, classifier,
                               images.batches(task["batch_size"], naflex=naflex_reading(task)),
                               mesh, task["template_average"])
    key = f"zeroshot/{task['name']}"
    log.info("%s: top1 %.4f top5 %.4f on %d images", key, result["top1"], result["top5"],
             result["count"])
    if details is not None:
        details.setdefault("zeroshot", {})[task["name"]] = {
            "class_names": list(names), "count": result["count"],
            "undecodable": [images.describe(i) for i in images.undecodable],
            "per_class": {n: float(a) for n, a in zip(names, result["per_class"], strict=True)},
            "confusion": result["confusion"].tolist()}
    return {f"{key}/top1": result["top1"], f"{key}/top5": result["top5"],
            **report_undecodable(task, images)}


def heldout_pairs(config: ml_collections.ConfigDict, model_def: ModelDef, state: TrainState,
                  tokenizer, mesh: Mesh, n: int, data: dict[str, Any]):
    """Embeddings (zimg, ztxt) of `n` held-out image-caption pairs of the TFDS split `data`,
    read through the training pipeline."""
    data_config = data_config_for(config, data)
    data_config.sources = ()  # the held-out split, whatever the training sources are
    data_config.train_split = data["split"]
    data_config.flip = False
    data_config.augment = default_data_config().augment
    data_config.render.text_pair_fraction = 0.0  # real image-caption pairs only (CLIPPO)
    # Curation is for training data: held-out pairs are measured as they are (a score file
    # or keep-list of the train split would drop every held-out uid).
    data_config.filters = default_filters_config()
    data_config.logical_streams = 1  # one stream: the split's first n pairs, in order
    data_config.naflex.budgets = ()  # square images, as every evaluator feeds them
    batch = next(train_dataset(data_config, tokenizer, global_batch_size=n,
                               seed=0).as_numpy_iterator())
    images = batch["image"]
    if images.shape[-1] == 1 and config.model.image.get("channels", 1) == 3:
        images = np.repeat(images, 3, axis=-1)  # grey data, an RGB model (an hf: import)
    return (encode_images(model_def, state, images, mesh),
            encode_texts(model_def, state, batch["text"], mesh))


def multi_caption_embeddings(task: dict[str, Any], config: ml_collections.ConfigDict,
                             model_def: ModelDef, state: TrainState, tokenizer, mesh: Mesh):
    """(zimg [N, D], ztxt [M, D], image index of each caption [M]): every caption of every
    image of the task's TFDS split (up to num_examples images; 0 = all)."""
    data = task["data"]
    data_config = data_config_for(config, data)
    zimg, ztxt, owner, offset = [], [], [], 0
    for images, captions in iter_multi_caption(data_config, data["name"], data["split"],
                                               task["captions_key"], task["num_examples"],
                                               task["batch_size"]):
        texts, image_index = flatten_captions(captions)
        zimg.append(encode_images(model_def, state, images, mesh))
        ztxt.append(encode_texts(model_def, state,
                                 tokenizer.encode_batch(texts, config.data.max_len), mesh))
        owner.append(image_index + offset)
        offset += len(images)
    return np.concatenate(zimg), np.concatenate(ztxt), np.concatenate(owner)


def run_retrieval_task(task: dict[str, Any], config: ml_collections.ConfigDict,
                       model_def: ModelDef, state: TrainState, tokenizer, mesh: Mesh,
                       details: dict[str, Any] | None = None) -> dict[str, float]:
    """retrieval/<name>/{i2t,t2i}_r{1,5,10} and mean_r1: with every caption of each image
    (COCO protocol), or on held-out pairs when `captions_key` is ""."""
    if task["captions_key"]:
        zimg, ztxt, owner = multi_caption_embeddings(task, config, model_def, state, tokenizer,
                                                     mesh)
        log.info("retrieval/%s: %d images, %d captions", task["name"], len(zimg), len(ztxt))
    else:
        zimg, ztxt = heldout_pairs(config, model_def, state, tokenizer, mesh,
                                   task["num_examples"] or 1000, task["data"])
        owner = None
    recalls = retrieval_recalls(zimg, ztxt, chunk=task["chunk"], text_image=owner)
    recalls["mean_r1"] = (recalls["i2t_r1"] + recalls["t2i_r1"]) / 2
    return {f"retrieval/{task['name']}/{k}": v for k, v in recalls.items()}


def run_embedding_stats_task(task: dict[str, Any], config: ml_collections.ConfigDict,
                             model_def: ModelDef, state: TrainState, tokenizer, mesh: Mesh,
                             details: dict[str, Any] | None = None) -> dict[str, float]:
    """embedding_stats/<name>/{alignment,uniformity_image,uniformity_text} on held-out
    image-caption pairs."""
    zimg, ztxt = heldout_pairs(config, model_def, state, tokenizer, mesh,
                               task["num_examples"], task["data"])
    key = f"embedding_stats/{task['name']}"
    return {
        f"{key}/alignment": embedding_stats.alignment(zimg, ztxt),
        f"{key}/uniformity_image": embedding_stats.uniformity(zimg),
        f"{key}/uniformity_text": embedding_stats.uniformity(ztxt),
    }


# (task, config, model_def, state, tokenizer, mesh, details) -> {metric key: value}
TaskRunner = Callable[..., dict[str, float]]

TASK_KINDS: Registry[TaskRunner] = Registry("task kind", {
    "zeroshot": run_zeroshot_task,
    "retrieval": run_retrieval_task,
    "fewshot": run_fewshot_task,
    "embedding_stats": run_embedding_stats_task,
}, config_key="evals.tasks[].kind")


def run_evals(config: ml_collections.ConfigDict, model_def: ModelDef, state: TrainState,
              tokenizer, mesh: Mesh, details: dict[str, Any] | None = None,
              step: int | None = None) -> dict[str, float]:
    """Scalar metrics of every task due at train step `step` (None: all of them) and
    `suite/mean` over the tasks' headlines."""
    metrics: dict[str, float] = {}
    rows = []
    for spec in tasks_of(config):
        if not due(spec, step, config.train.eval_every):
            continue
        for task in at_budgets(spec, config.model):  # a run per patch budget (NaFlex)
            result = TASK_KINDS[task["kind"]](task, config, model_def, state, tokenizer, mesh,
                                              details)
            metrics.update(result)
            key = headline_key(task)
            rows.append({"kind": task["kind"], "name": task["name"], "metric": key,
                         "headline": None if key is None else result.get(key),
                         **({"max_num_patches": task["max_num_patches"]}
                            if task.get("naflex_patch") else {})})
    scores = [row["headline"] for row in rows if row["headline"] is not None]
    if scores:
        metrics["suite/mean"] = float(np.mean(scores))
    if details is not None:
        details["tasks"] = rows
    return metrics
