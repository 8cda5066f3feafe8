"""Few-shot linear-probe evaluation (`fewshot` tasks) on frozen image embeddings."""

from __future__ import annotations

import logging
from typing import Any

import ml_collections
import numpy as np
from jax.sharding import Mesh

from contrastive_jax.config.eval_budgets import naflex_reading
from contrastive_jax.data.labelled import LabelledImages, data_config_for, open_labelled
from contrastive_jax.errors import DataError
from contrastive_jax.evaluate.embed import batch_images, encode_images
from contrastive_jax.evaluate.linear_probe import class_permutations, fit_probe, probe_accuracy
from contrastive_jax.models.state import ModelDef, TrainState

log = logging.getLogger(__name__)


def embed_images(images: LabelledImages, model_def: ModelDef, state: TrainState, mesh: Mesh,
                 batch_size: int, keep: np.ndarray | None = None,
                 naflex: tuple[int, int] | None = None
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(embeddings [n, D], labels [n], positions [n]) of the examples at positions `keep`
    (default: all) that decoded, in stored order; `naflex`: (patch, budget) of a NaFlex
    model."""
    zs, labels, index = [], [], []
    for batch in images.batches(batch_size, keep, naflex):
        valid = batch["mask"] > 0
        # The whole padded batch: one compiled shape for every batch, the last too.
        zs.append(encode_images(model_def, state, batch_images(batch), mesh)[valid])
        labels.append(batch["label"][valid])
        index.append(batch["index"][valid])
    if not zs:
        raise DataError(f"{images.where}: no examples to embed")
    return (np.concatenate(zs), np.concatenate(labels).astype(np.int64),
            np.concatenate(index).astype(np.int64))


def fewshot_accuracies(train_z: np.ndarray, train_labels: np.ndarray, test_z: np.ndarray,
                       test_labels: np.ndarray, num_classes: int, shots: list[int],
                       seeds: int, l2_reg: float, where: str = "fewshot"
                       ) -> dict[int, list[float]]:
    """{shots: [accuracy per seed]}; `train_*` are the candidates the shots are drawn from
    (label -1: not a candidate)."""
    out: dict[int, list[float]] = {k: [] for k in shots}
    for seed in range(seeds):
        perms = class_permutations(train_labels, num_classes, seed)
        for k in shots:
            short = [c for c, p in enumerate(perms) if len(p) < k]
            if short:
                raise DataError(f"{where}: class {short[0]} has {len(perms[short[0]])} "
                                f"usable training examples, fewer than {k} shots")
            idx = np.concatenate([p[:k] for p in perms])
            probe = fit_probe(train_z[idx], train_labels[idx], num_classes, l2_reg)
            out[k].append(probe_accuracy(probe, test_z, test_labels))
    return out


def shot_embeddings(train: LabelledImages, model_def: ModelDef, state: TrainState, mesh: Mesh,
                    task: dict[str, Any], num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """(labels [N], embeddings [N, D]) of the train examples, where only those some seed's
    largest shot set uses are embedded (the rest stay 0). An image that does not decode
    gets label -1 and the draws are made again without it, until every draw decoded."""
    labels, most = train.labels.copy(), max(task["shots"])
    embedded = np.zeros(len(labels), bool)
    z = None
    while True:
        needed = np.unique(np.concatenate(
            [p[:most] for seed in range(task["seeds"])
             for p in class_permutations(labels, num_classes, seed)]))
        needed = needed[~embedded[needed]]
        if not len(needed):
            return labels, z
        got_z, _, got = embed_images(train, model_def, state, mesh, task["batch_size"], needed,
                                     naflex_reading(task))
        if z is None:
            z = np.zeros((len(labels), got_z.shape[1]), np.float32)
        z[got] = got_z
        embedded[needed] = True
        labels[np.setdiff1d(needed, got)] = -1  # undecodable: never a shot


def run_fewshot_task(task: dict[str, Any], config: ml_collections.ConfigDict,
                     model_def: ModelDef, state: TrainState, tokenizer: Any, mesh: Mesh,
                     details: dict[str, Any] | None = None) -> dict[str, float]:
    """fewshot/<name>/<k>shot: test accuracy of the probe, averaged over seeds (images
    only: the task signature's `tokenizer` is unused)."""
    del tokenizer
    name, shots = task["name"], list(task["shots"])
    where = f"fewshot task {name!r}"
    train = open_labelled(task["train_data"], data_config_for(config, task["train_data"]),
                          f"{where} (train_data)")
    test = open_labelled(task["data"], data_config_for(config, task["data"]), where)
    num_classes = int(max(train.labels.max(initial=-1), test.labels.max(initial=-1))) + 1
    train_labels, train_z = shot_embeddings(train, model_def, state, mesh, task, num_classes)
    test_z, test_labels, _ = embed_images(test, model_def, state, mesh, task["batch_size"],
                                          naflex=naflex_reading(task))
    result = fewshot_accuracies(train_z, train_labels, test_z, test_labels, num_classes,
                                shots, task["seeds"], task["l2_reg"], where)
    metrics = {f"fewshot/{name}/{k}shot": float(np.mean(v)) for k, v in result.items()}
    for key, value in metrics.items():
        log.info("%s: %.4f over %d seeds, %d test images", key, value, task["seeds"],
                 len(test_labels))
    if details is not None:
        details.setdefault("fewshot", {})[name] = {
            f"{k}shot": {"per_seed": v, "mean": float(np.mean(v))} for k, v in result.items()}
    undecodable = len(train.undecodable) + len(test.undecodable)
    return {**metrics, f"fewshot/{name}/undecodable": float(undecodable)}
