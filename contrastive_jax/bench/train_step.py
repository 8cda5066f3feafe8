"""Train-step throughput on synthetic batches of the config's shapes (no input pipeline)."""

from __future__ import annotations

import time
from typing import Any

import jax
import ml_collections
import numpy as np
import optax
from jax.sharding import Mesh

from contrastive_jax import cpu_host
from contrastive_jax.bench.flops import compiled_flops, matmul_peak
from contrastive_jax.models.state import TrainState
from contrastive_jax.objectives import objective_of
from contrastive_jax.parallel.mesh import batch_size_per_process, create_mesh, to_global
from contrastive_jax.train.init_state import create_train_state
from contrastive_jax.train.lock import lock_patterns
from contrastive_jax.train.optimizer import create_optimizer
from contrastive_jax.train.step import StepFn, train_step_from_config


def batch_shapes(config: ml_collections.ConfigDict,
                 batch_size: int) -> dict[str, jax.ShapeDtypeStruct]:
    """The step's inputs for the config, as shapes only: "label" [B]; "text" as the model's
    objective reads it ([B, L] token or synset ids, or a rendered image); "image"
    [B, H, W, C], or "image_embedding" [B, D] when `train.embedding_cache` is on (the step
    then reads those)."""
    image = config.model.image
    size = image.image_size if isinstance(image.image_size, int) else image.image_size[0]
    pixels = (batch_size, size, size, image.channels)
    text = ((batch_size, config.data.max_len), np.int32)
    if objective_of(config.model.name).text_input == "rendered":
        text = (pixels, np.float32)
    shapes = {"label": ((batch_size,), np.int32), "text": text}
    if config.train.embedding_cache.enabled:
        shapes["image_embedding"] = ((batch_size, config.model.embed_dim), np.float32)
    else:
        shapes["image"] = (pixels, np.float32)
    return {k: jax.ShapeDtypeStruct(shape, dtype) for k, (shape, dtype) in shapes.items()}


def synthetic_text(config: ml_collections.ConfigDict, shape: tuple[int, ...],
                   rng: np.random.Generator) -> np.ndarray:
    """Random "text" of `shape` as the objective reads it: token ids of the vocabulary,
    up to 3 synset ids per caption (0-padded), or rendered pixels in [-1, 1]."""
    objective = objective_of(config.model.name)
    if objective.text_input == "synsets":
        ids = rng.integers(0, config.model.head.num_synsets + 1, shape)
        ids[:, 3:] = 0
        return ids.astype(np.int32)
    if objective.text_input == "tokens":
        vocab = config.model[objective.token_group].vocab_size
        return rng.integers(3, vocab, shape).astype(np.int32)
    return rng.uniform(-1, 1, shape).astype(np.float32)


def synthetic_batch(config: ml_collections.ConfigDict, batch_size: int) -> dict[str, np.ndarray]:
    """Random inputs of `batch_shapes`: the objective's text, uniform pixels in [-1, 1],
    unit embeddings."""
    rng = np.random.default_rng(0)
    shapes = batch_shapes(config, batch_size)
    batch = {"label": np.arange(batch_size, dtype=np.int32),
             "text": synthetic_text(config, shapes["text"].shape, rng)}
    if "image_embedding" in shapes:
        z = rng.normal(size=shapes["image_embedding"].shape).astype(np.float32)
        batch["image_embedding"] = z / np.linalg.norm(z, axis=1, keepdims=True)
    else:
        batch["image"] = rng.uniform(-1, 1, shapes["image"].shape).astype(np.float32)
    return batch


def step_setup(config: ml_collections.ConfigDict, steps: int) -> tuple[
        Mesh, optax.GradientTransformation, TrainState, TrainState, StepFn, dict[str, Any]]:
    """(mesh, tx, state, shardings, step, synthetic global batch) of the timed step.

    The step is the loop's own (train_step_from_config): locked params, cached embeddings
    and label positives change the model work itself, so all count."""
    mesh = create_mesh(config.mesh)
    local = batch_size_per_process(config.train.batch_size, mesh)
    tx, _ = create_optimizer(config.optimizer, max(config.train.steps, steps + 1))
    state, shardings = create_train_state(config, tx, mesh)
    batch = to_global(synthetic_batch(config, local), mesh)
    return mesh, tx, state, shardings, train_step_from_config(config, mesh, tx, shardings), batch


def bench_train_step(config: ml_collections.ConfigDict, steps: int = 20,
                     peak_flops_per_sec: float | None = None) -> dict[str, Any]:
    """Compiles the step, runs `steps` timed steps, returns examples/s and timings.

    Model FLOPs per step come from XLA's cost analysis of the ORDINARY step (one batch, no
    remat, no scan over layers), summed over devices: recomputation by GradCache or remat
    is overhead, not model work, and XLA counts a loop body once, not once per iteration. With
    `peak_flops_per_sec` (see flops.matmul_peak) the result includes `mfu`.
    """
    mesh, tx, state, shardings, step_fn, batch = step_setup(config, steps)
    start = time.perf_counter()
    compiled = step_fn.lower(state, batch).compile()
    compile_s = time.perf_counter() - start
    self_supervised = _self_supervised_phase(config)
    # XLA counts both branches of SigLIP 2's cond: before its start, count without them.
    idle_branch = self_supervised is False
    ordinary = (config.model.remat == "none" and not config.model.scan_layers
                and config.train.microbatches == 1 and not idle_branch)
    if ordinary:  # the timed step is the ordinary one: no second compilation
        flops = compiled_flops(compiled) * mesh.size
    else:
        plain = config.copy_and_resolve_references()
        plain.model.remat = "none"
        plain.model.scan_layers = False  # a scanned body would count once, not per layer
        plain.train.microbatches = 1
        plain_state, plain_shardings = state, shardings
        if idle_branch:
            plain.model.self_distill.enabled = plain.model.masked_prediction.enabled = False
            plain_state, plain_shardings = create_train_state(plain, tx, mesh)
        plain_step = train_step_from_config(plain, mesh, tx, plain_shardings)
        flops = compiled_flops(plain_step.lower(plain_state, batch).compile()) * mesh.size
    state, metrics = compiled(state, batch)  # warm-up
    jax.block_until_ready(metrics)
    # Each step timed on its own: on a shared machine the median and the best step are
    # steadier than the mean, and the best step matches how the matmul peak is taken.
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        state, metrics = compiled(state, batch)
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - start)
    seconds, best = float(np.median(times)), min(times)
    result = {
        "bench": "train_step",
        "loss": config.loss.name,
        "global_batch": config.train.batch_size,
        "devices": mesh.size,
        "platform": jax.devices()[0].platform,
        "step_ms": round(seconds * 1e3, 2),  # median
        "step_ms_best": round(best * 1e3, 2),
        "examples_per_sec": round(config.train.batch_size / seconds, 1),
        "compile_s": round(compile_s, 2),
        "microbatches": config.train.microbatches,
        "remat": config.model.remat,
        "locked": list(lock_patterns(config.train.locked)),
        "embedding_cache": config.train.embedding_cache.enabled,
        "positives": config.loss.positives,
        "mask_ratio": config.model.image.get("mask_ratio", 0.0),  # FLIP
        "model": config.model.name,
        # SigLIP 2: whether the timed steps ran its self-supervised terms (null: no such).
        "self_supervised": self_supervised,
        "flops_per_step": flops,
        "flops_per_sec": flops / seconds,
        "cpu_malloc_tuned": cpu_host.malloc_tuned(),
        "cpu_heap_huge_pages": cpu_host.heap_huge_pages(),
    }
    if peak_flops_per_sec:
        result.update(mfu_from_peak(result, peak_flops_per_sec))
    return result


def _self_supervised_phase(config: ml_collections.ConfigDict) -> bool | None:
    """SigLIP 2: whether the timed steps (from step 0) run its self-supervised terms, which
    start at `model.teacher.start_fraction` of `train.steps`; None for other models."""
    model = config.model
    if "teacher" not in model:
        return None
    enabled = model.self_distill.enabled or model.masked_prediction.enabled
    return bool(enabled) and round(model.teacher.start_fraction * config.train.steps) <= 0


def mfu_from_peak(result: dict[str, Any], peak_flops_per_sec: float) -> dict[str, float]:
    """`mfu` (median step) and `mfu_best` (best step) of a `bench_train_step` result."""
    flops = result["flops_per_step"]
    return {"mfu": round(flops / (result["step_ms"] / 1e3) / peak_flops_per_sec, 4),
            "mfu_best": round(flops / (result["step_ms_best"] / 1e3) / peak_flops_per_sec, 4)}


def bench_step_against_peak(config: ml_collections.ConfigDict, steps: int,
                            matmul_size: int | None = None) -> tuple[dict, dict]:
    """(matmul peak row, step result with `mfu`). The peak, in the model's compute dtype, is
    taken before and after the step and the higher one kept: on a shared machine one low
    measurement of the peak would inflate the MFU."""
    before = matmul_peak(matmul_size, dtype=config.model.dtype)
    result = bench_train_step(config, steps=steps)
    after = matmul_peak(matmul_size, dtype=config.model.dtype)
    peak = max(before, after, key=lambda row: row["flops_per_sec"])
    return peak, {**result, **mfu_from_peak(result, peak["flops_per_sec"])}
