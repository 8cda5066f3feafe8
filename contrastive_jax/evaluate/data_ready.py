"""Which eval tasks have their data: checked before any model is loaded, so that a suite
whose datasets are not prepared stops in a second, naming every task that cannot run,
instead of after the model loaded and the first tasks ran; `eval --skip-missing` runs the
ready ones."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import ml_collections

from contrastive_jax import paths
from contrastive_jax.config.eval_tasks import tasks_of
from contrastive_jax.datasets.catalogue import not_prepared


def _missing(spec: Mapping[str, Any], default_dir: str) -> str | None:
    """Why the data `spec` names is not there, and how to get it; None if it is."""
    kind = spec["kind"]
    if kind == "tfds":
        return not_prepared(spec["name"], spec["data_dir"] or default_dir or None)
    if kind == "webdataset":
        pattern = spec["pattern"]
        return None if paths.glob(pattern) else f"no webdataset shards match {pattern!r}"
    path = spec["path"]
    what = "image folder" if kind == "image_folder" else "table"
    return None if paths.exists(path) else f"{what} {path} not found"


def missing_data(config: ml_collections.ConfigDict) -> dict[str, str]:
    """Task key ("<kind>/<name>") -> why its data (or its few-shot train data) is missing
    and how to prepare it, for every task of `config` whose data is not there."""
    missing = {}
    for task in tasks_of(config):
        for key in ("data", "train_data"):
            why = _missing(task[key], config.data.data_dir) if task.get(key) else None
            if why:
                missing[f"{task['kind']}/{task['name']}"] = why
                break
    return missing


def without_tasks(config: ml_collections.ConfigDict, keys: set[str]) -> None:
    """Drops the tasks `keys` ("<kind>/<name>") from `config.evals.tasks`, in place."""
    evals = config.evals
    with evals.unlocked():
        evals.tasks = [t for t in evals.tasks if f"{t['kind']}/{t['name']}" not in keys]
