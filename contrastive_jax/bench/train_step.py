"""Train-step throughput on synthetic batches of the config's shapes (no input pipeline)."""

from __future__ import annotations

import math
import time
from typing import Any

import jax
import ml_collections
import numpy as np
import optax
from jax.sharding import Mesh

from contrastive_jax import cpu_host
from contrastive_jax.bench.flops import compiled_flops, matmul_peak
from contrastive_jax.data import order
from contrastive_jax.data.schema import (
    NAFLEX_MASK,
    NAFLEX_PATCHES,
    NAFLEX_SHAPE,
    token_batch_sizes,
)
from contrastive_jax.models.state import TrainState
from contrastive_jax.objectives import objective_of
from contrastive_jax.parallel.mesh import (
    BATCH_AXES,
    batch_size_per_process,
    create_mesh,
    to_global,
)
from contrastive_jax.train.init_state import create_train_state
from contrastive_jax.train.lock import lock_patterns
from contrastive_jax.train.optimizer import create_optimizer
from contrastive_jax.train.step import StepFn, train_step_from_config


def naflex_budget(config: ml_collections.ConfigDict) -> int | None:
    """The NaFlex budget of the config's batches (the first of `data.naflex.budgets`);
    None without NaFlex batches."""
    naflex = config.data.get("naflex")
    return int(naflex.budgets[0]) if naflex and naflex.budgets else None


def naflex_grid(budget: int) -> tuple[int, int]:
    """A near-square patch grid (h, w) that fills `budget` as closely as h*w <= budget."""
    h = int(np.sqrt(budget))
    return h, budget // h


def batch_shapes(config: ml_collections.ConfigDict,
                 batch_size: int) -> dict[str, jax.ShapeDtypeStruct]:
    """The step's inputs for the config, as shapes only: "label" [B]; "text" as the model's
    objective reads it ([B, L] token or synset ids, or a rendered image); "image"
    [B, H, W, C], or "image_embedding" [B, D] when `train.embedding_cache` is on (the step
    then reads those), or with NaFlex batches (`data.naflex.budgets`, the first budget N)
    the patches [B, N, p*p*C], mask [B, N] and grid shapes [B, 2]."""
    image = config.model.image
    budget = naflex_budget(config)
    size = image.image_size if isinstance(image.image_size, int) else image.image_size[0]
    pixels = (batch_size, size, size, image.channels)
    text = ((batch_size, config.data.max_len), np.int32)
    if objective_of(config.model.name).text_input == "rendered":
        text = (pixels, np.float32)
    shapes = {"label": ((batch_size,), np.int32), "text": text}
    if config.train.embedding_cache.enabled:
        shapes["image_embedding"] = ((batch_size, config.model.embed_dim), np.float32)
    elif budget:
        patch = image.patch_size if isinstance(image.patch_size, int) else image.patch_size[0]
        shapes[NAFLEX_PATCHES] = ((batch_size, budget, patch * patch * image.channels),
                                  np.float32)
        shapes[NAFLEX_MASK] = ((batch_size, budget), np.int32)
        shapes[NAFLEX_SHAPE] = ((batch_size, 2), np.int32)
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
    elif NAFLEX_PATCHES in shapes:  # every image a near-square grid that fills the budget
        budget = shapes[NAFLEX_MASK].shape[1]
        grid = naflex_grid(budget)
        batch[NAFLEX_PATCHES] = rng.uniform(-1, 1, shapes[NAFLEX_PATCHES].shape).astype(
            np.float32)
        batch[NAFLEX_MASK] = np.broadcast_to(np.arange(budget) < grid[0] * grid[1],
                                             (batch_size, budget)).astype(np.int32)
        batch[NAFLEX_SHAPE] = np.broadcast_to(np.asarray(grid, np.int32), (batch_size, 2))
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
        "max_num_patches": naflex_budget(config),  # NaFlex: the batch's budget (null: none)
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


def per_budget(config: ml_collections.ConfigDict) -> list[ml_collections.ConfigDict]:
    """The config once per NaFlex budget of `data.naflex.budgets` (one budget each, at its
    batch size: `tokens_per_batch` // budget with token-budget batching), or itself."""
    naflex = config.data.get("naflex")
    if not naflex or not naflex.budgets:
        return [config]
    configs = []
    for budget in naflex.budgets:
        one = config.copy_and_resolve_references()
        one.data.naflex.budgets, one.data.naflex.weights = (budget,), ()
        if naflex.tokens_per_batch:  # the loop's rule (train/loop.py)
            mesh = create_mesh(config.mesh)
            shards = int(np.prod([mesh.shape[a] for a in BATCH_AXES]))
            streams = order.resolve(config.data.logical_streams, config.train.batch_size,
                                    jax.process_count())
            unit = math.lcm(streams, shards * config.train.microbatches)
            one.train.batch_size, = token_batch_sizes([budget], naflex.tokens_per_batch, unit)
        configs.append(one)
    return configs


def bench_step_against_peak(config: ml_collections.ConfigDict, steps: int,
                            matmul_size: int | None = None) -> tuple[dict, ...]:
    """(matmul peak row, step result with `mfu`, ...): one result per NaFlex budget of
    `data.naflex.budgets` (`per_budget`), else one. The peak, in the model's compute dtype,
    is taken before and after the steps and the higher one kept: on a shared machine one
    low measurement of the peak would inflate the MFU."""
    before = matmul_peak(matmul_size, dtype=config.model.dtype)
    results = [bench_train_step(one, steps=steps) for one in per_budget(config)]
    after = matmul_peak(matmul_size, dtype=config.model.dtype)
    peak = max(before, after, key=lambda row: row["flops_per_sec"])
    return peak, *({**r, **mfu_from_peak(r, peak["flops_per_sec"])} for r in results)
