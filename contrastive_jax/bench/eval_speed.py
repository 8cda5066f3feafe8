"""Eval forward throughput: images/s and texts/s through the eval's own sharded, jitted
encoders (host batch in, unit embeddings back on the host), against the train step's
examples/s at the same global batch. Eval is forward-only, so the goal is >= the step."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import jax
import ml_collections
import numpy as np

from contrastive_jax.bench.train_step import bench_train_step, synthetic_batch
from contrastive_jax.evaluate.embed import encode_images, encode_texts
from contrastive_jax.models.state import ModelDef
from contrastive_jax.parallel.mesh import create_mesh
from contrastive_jax.train.init_state import create_train_state
from contrastive_jax.train.optimizer import create_optimizer


def _median_seconds(fn: Callable[[], Any], calls: int) -> tuple[float, float]:
    fn()  # compiles
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times)), min(times)


def bench_eval(config: ml_collections.ConfigDict, batch_size: int | None = None,
               batches: int = 10, steps: int = 10) -> Iterator[dict[str, Any]]:
    """One row per tower ("image", "text") and one for the train step; each tower row has
    `per_sec` (median batch) and `vs_train_step` (its rate / the step's examples/s)."""
    batch_size = batch_size or config.train.batch_size
    mesh = create_mesh(config.mesh)
    tx, _ = create_optimizer(config.optimizer, max(config.train.steps, 2))
    state, _ = create_train_state(config, tx, mesh)
    model_def = ModelDef(config.model)
    inputs = synthetic_batch(config, batch_size)
    step = bench_train_step(config, steps)
    yield step
    towers = {"image": lambda: encode_images(model_def, state, inputs["image"], mesh)}
    if "text" in config.model:  # a one-tower model (CLIPPO) reads rendered text as images
        towers["text"] = lambda: encode_texts(model_def, state, inputs["text"], mesh)
    for tower, fn in towers.items():
        median, best = _median_seconds(fn, batches)
        rate = batch_size / median
        yield {"bench": "eval", "tower": tower, "batch": batch_size, "devices": mesh.size,
               "platform": jax.devices()[0].platform, "batch_ms": round(median * 1e3, 2),
               "batch_ms_best": round(best * 1e3, 2), "per_sec": round(rate, 1),
               "train_examples_per_sec": step["examples_per_sec"],
               "vs_train_step": round(rate / step["examples_per_sec"], 2)}
