"""FLOP counts from XLA's cost analysis and the measured matmul peak, for MFU."""

from __future__ import annotations

import time
from typing import Any

import jax
import jax.numpy as jnp


def compiled_flops(compiled: Any) -> float:
    """FLOPs of one call of a compiled executable, as XLA's cost analysis counts them.

    For an SPMD program this is the per-device module; multiply by the device count.
    """
    analysis = compiled.cost_analysis()
    if isinstance(analysis, (list, tuple)):  # older jax returned one dict per module
        analysis = analysis[0]
    return float(analysis.get("flops", 0.0))


def default_matmul_size() -> int:
    """2048 saturates a CPU; accelerators need larger products to reach their peak."""
    return 2048 if jax.devices()[0].platform == "cpu" else 8192


def matmul_peak(size: int | None = None, repeats: int = 5,
                dtype: str = "float32") -> dict[str, Any]:
    """Best-of-`repeats` FLOP/s of one jitted [size, size] @ [size, size] matmul in `dtype`
    (the model's compute dtype: a bf16 model is measured against the bf16 peak)."""
    size = size or default_matmul_size()
    a = jax.random.normal(jax.random.key(0), (size, size), jnp.float32).astype(dtype)
    matmul = jax.jit(jnp.matmul)
    matmul(a, a).block_until_ready()  # compile
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        matmul(a, a).block_until_ready()
        best = min(best, time.perf_counter() - start)
    flops = 2.0 * size**3
    return {"bench": "matmul_peak", "size": size, "dtype": dtype,
            "platform": jax.devices()[0].platform, "seconds": round(best, 5),
            "flops_per_sec": flops / best}
