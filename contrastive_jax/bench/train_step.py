"""Train-step throughput on synthetic batches of the config's shapes (no input pipeline)."""

from __future__ import annotations

import time
from typing import Any

import jax
import ml_collections
import numpy as np

from contrastive_jax.bench.flops import compiled_flops
from contrastive_jax.parallel.mesh import batch_size_per_process, create_mesh, to_global
from contrastive_jax.train.loop import loss_from_config
from contrastive_jax.train.optimizer import create_optimizer
from contrastive_jax.train.state import ModelDef, create_train_state
from contrastive_jax.train.step import jit_train_step, make_train_step


def synthetic_batch(config: ml_collections.ConfigDict, batch_size: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    image = config.model.image
    size = image.image_size if isinstance(image.image_size, int) else image.image_size[0]
    images = rng.uniform(-1, 1, (batch_size, size, size, image.channels)).astype(np.float32)
    if "text" in config.model:
        vocab, length = config.model.text.vocab_size, config.data.max_len
        text = rng.integers(3, vocab, (batch_size, length)).astype(np.int32)
    else:  # one tower (CLIPPO): the text is a rendered image of the image's shape
        text = rng.uniform(-1, 1, images.shape).astype(np.float32)
    return {"image": images, "text": text, "label": np.arange(batch_size, dtype=np.int32)}


def bench_train_step(config: ml_collections.ConfigDict, steps: int = 20,
                     peak_flops_per_sec: float | None = None) -> dict[str, Any]:
    """Compiles the step, runs `steps` timed steps, returns examples/s and timings.

    Model FLOPs per step come from XLA's cost analysis of the ORDINARY step (one batch, no
    remat), summed over devices: recomputation by GradCache or remat is overhead, not model
    work, and XLA counts a loop body once, not once per iteration. With
    `peak_flops_per_sec` (see flops.matmul_peak) the result includes `mfu`.
    """
    mesh = create_mesh(config.mesh)
    local = batch_size_per_process(config.train.batch_size, mesh)
    tx, _ = create_optimizer(config.optimizer, max(config.train.steps, steps + 1))
    state, shardings = create_train_state(config, tx, mesh)
    loss_fn = loss_from_config(config, mesh)
    batch = to_global(synthetic_batch(config, local), mesh)
    plain_model = config.model.copy_and_resolve_references()
    plain_model.remat = "none"
    plain_step = jit_train_step(make_train_step(ModelDef(plain_model), tx, loss_fn),
                                shardings, mesh)
    flops = compiled_flops(plain_step.lower(state, batch).compile()) * mesh.size
    step_fn = jit_train_step(
        make_train_step(ModelDef(config.model), tx, loss_fn,
                        microbatches=config.train.microbatches, mesh=mesh),
        shardings, mesh)
    start = time.perf_counter()
    compiled = step_fn.lower(state, batch).compile()
    compile_s = time.perf_counter() - start
    state, metrics = compiled(state, batch)  # warm-up
    jax.block_until_ready(metrics)
    start = time.perf_counter()
    for _ in range(steps):
        state, metrics = compiled(state, batch)
    jax.block_until_ready(metrics)
    seconds = (time.perf_counter() - start) / steps
    result = {
        "bench": "train_step",
        "loss": config.loss.name,
        "global_batch": config.train.batch_size,
        "devices": mesh.size,
        "platform": jax.devices()[0].platform,
        "step_ms": round(seconds * 1e3, 2),
        "examples_per_sec": round(config.train.batch_size / seconds, 1),
        "compile_s": round(compile_s, 2),
        "microbatches": config.train.microbatches,
        "remat": config.model.remat,
        "flops_per_step": flops,
        "flops_per_sec": flops / seconds,
    }
    if peak_flops_per_sec:
        result["mfu"] = round(flops / seconds / peak_flops_per_sec, 4)
    return result
