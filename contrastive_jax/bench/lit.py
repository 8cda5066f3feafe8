"""LiT step times: unlocked vs locked image tower vs cached image embeddings."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import jax
import ml_collections

from contrastive_jax.bench.train_step import bench_train_step, synthetic_batch
from contrastive_jax.models.state import ModelDef

# name -> (train.locked.image, train.embedding_cache.enabled)
VARIANTS = {"unlocked": (False, False), "locked_image": (True, False),
            "embedding_cache": (True, True)}


def image_forward_rate(config: ml_collections.ConfigDict, batch_size: int,
                       repeats: int = 20) -> float:
    """Images/s of the image tower's forward pass alone: what building the cache costs."""
    params, rest = ModelDef.init(config.model, jax.random.key(0))
    model_def = ModelDef(config.model)
    forward = jax.jit(lambda p, x: model_def.bind(p, rest).encode_image(x))
    images = synthetic_batch(config, batch_size)["image"]
    forward(params, images).block_until_ready()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        forward(params, images).block_until_ready()
        best = min(best, time.perf_counter() - start)
    return batch_size / best


def bench_lit(config: ml_collections.ConfigDict, steps: int = 20) -> Iterator[dict[str, Any]]:
    """Yields one train_step measurement per variant, then a summary with the speed-ups
    (of the best single step of each, robust to other load on the machine)."""
    times = {}
    for name, (lock_image, cache) in VARIANTS.items():
        variant = config.copy_and_resolve_references()
        variant.train.locked.image = lock_image
        variant.train.embedding_cache.enabled = cache
        variant.train.microbatches = 1
        result = bench_train_step(variant, steps=steps)
        times[name] = result["step_ms_best"]
        yield {**result, "bench": "lit_step", "variant": name}
    plain = config.copy_and_resolve_references()
    plain.train.embedding_cache.enabled = False
    rate = image_forward_rate(plain, config.train.batch_size)
    yield {
        "bench": "lit_summary",
        "best_step_ms": times,
        "speedup_locked_image": round(times["unlocked"] / times["locked_image"], 2),
        "speedup_embedding_cache": round(times["unlocked"] / times["embedding_cache"], 2),
        "image_forward_examples_per_sec": round(rate, 1),
        # Building the cache is one forward pass per training example.
        "cache_build_ms_per_batch": round(1e3 * config.train.batch_size / rate, 2),
        "platform": jax.devices()[0].platform,
        "devices": len(jax.devices()),
    }
