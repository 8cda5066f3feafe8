"""Few-shot linear-probe evaluation (`evals.fewshot`) on frozen image embeddings."""

from __future__ import annotations

import logging
from typing import Any

import ml_collections
import numpy as np
from jax.sharding import Mesh

from contrastive_jax.data.eval_data import eval_dataset, labels
from contrastive_jax.datasets.catalogue import class_names
from contrastive_jax.errors import ConfigError, DataError
from contrastive_jax.evaluate.embed import encode_images
from contrastive_jax.evaluate.linear_probe import class_permutations, fit_probe, probe_accuracy
from contrastive_jax.train.state import ModelDef, TrainState

log = logging.getLogger(__name__)


def embed_split(data_config: ml_collections.ConfigDict, model_def: ModelDef, state: TrainState,
                mesh: Mesh, split: str, batch_size: int,
                keep: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(embeddings [N, D], labels [N]) of a split in stored order, or of the examples at
    positions `keep` only (sorted), so a few-shot train set never embeds the whole split."""
    wanted = None if keep is None else np.sort(np.asarray(keep))
    zs, labels, position = [], [], 0
    for batch in eval_dataset(data_config, split=split,
                              batch_size=batch_size).as_numpy_iterator():
        valid = batch["mask"] > 0
        rows = np.arange(position, position + int(valid.sum()))
        position += len(rows)
        images, batch_labels = batch["image"][valid], batch["label"][valid]
        if wanted is not None:
            take = np.isin(rows, wanted)
            images, batch_labels = images[take], batch_labels[take]
        if len(images):
            zs.append(encode_images(model_def, state, images, mesh))
            labels.append(batch_labels)
        if wanted is not None and position > wanted[-1]:
            break
    if not zs:
        raise DataError(f"dataset {data_config.dataset!r} split {split!r}: no examples to embed")
    return np.concatenate(zs), np.concatenate(labels).astype(np.int64)


def fewshot_accuracies(train_z: np.ndarray, train_labels: np.ndarray, test_z: np.ndarray,
                       test_labels: np.ndarray, num_classes: int, shots: list[int],
                       seeds: int, l2_reg: float) -> dict[int, list[float]]:
    """{shots: [accuracy per seed]}; `train_*` are the candidates the shots are drawn from."""
    out: dict[int, list[float]] = {k: [] for k in shots}
    for seed in range(seeds):
        perms = class_permutations(train_labels, num_classes, seed)
        for k in shots:
            short = [c for c, p in enumerate(perms) if len(p) < k]
            if short:
                raise DataError(f"config key 'evals.fewshot.shots': class {short[0]} has "
                                f"{len(perms[short[0]])} training examples, fewer than {k} "
                                "shots")
            idx = np.concatenate([p[:k] for p in perms])
            probe = fit_probe(train_z[idx], train_labels[idx], num_classes, l2_reg)
            out[k].append(probe_accuracy(probe, test_z, test_labels))
    return out


def run_fewshot(config: ml_collections.ConfigDict, model_def: ModelDef, state: TrainState,
                tokenizer: Any, mesh: Mesh, details: dict[str, Any] | None = None
                ) -> dict[str, float]:
    """fewshot/<name>/<k>shot: test accuracy of the probe, averaged over seeds (images
    only: the evaluator signature's `tokenizer` is unused)."""
    del tokenizer
    fc = config.evals.fewshot
    if not fc.shots or min(fc.shots) < 1 or fc.seeds < 1:
        raise ConfigError("config key 'evals.fewshot': shots must be positive and seeds >= 1")
    data_config = config.data.copy_and_resolve_references()
    data_config.dataset = fc.dataset
    num_classes = len(class_names(fc.dataset, data_config.data_dir,
                                  data_config.label_key))
    train_labels = labels(data_config, fc.train_split)
    # Only the examples some seed's largest shot set uses are embedded.
    most = max(fc.shots)
    keep = np.unique(np.concatenate(
        [p[:most] for seed in range(fc.seeds)
         for p in class_permutations(train_labels, num_classes, seed)]))
    kept_z, _ = embed_split(data_config, model_def, state, mesh, fc.train_split, fc.batch_size,
                            keep)
    train_z = np.zeros((len(train_labels), kept_z.shape[1]), np.float32)
    train_z[keep] = kept_z
    test_z, test_labels = embed_split(data_config, model_def, state, mesh, fc.test_split,
                                      fc.batch_size)
    result = fewshot_accuracies(train_z, train_labels, test_z, test_labels, num_classes,
                                list(fc.shots), fc.seeds, fc.l2_reg)
    metrics = {f"fewshot/{fc.name}/{k}shot": float(np.mean(v)) for k, v in result.items()}
    for key, value in metrics.items():
        log.info("%s: %.4f over %d seeds, %d test images", key, value, fc.seeds,
                 len(test_labels))
    if details is not None:
        details.setdefault("fewshot", {})[fc.name] = {
            f"{k}shot": {"per_seed": v, "mean": float(np.mean(v))} for k, v in result.items()}
    return metrics
