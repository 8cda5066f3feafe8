"""Compile-only memory of the losses: XLA's per-device temporary bytes, and the largest batch
that fits a memory budget. Nothing is executed, so large batches cost only compile time."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from contrastive_jax.bench.variants import LOSS_VARIANTS
from contrastive_jax.errors import ConfigError
from contrastive_jax.losses import create_loss


def _mesh(num_devices: int) -> Mesh:
    devices = jax.devices()
    if num_devices > len(devices):
        raise ConfigError(f"--devices: {num_devices} devices requested, {len(devices)} "
                          "available (on a CPU set "
                          "XLA_FLAGS=--xla_force_host_platform_device_count=8)")
    return Mesh(devices[:num_devices], ("data",))


def compile_loss_grad(variant: str, global_batch: int, dim: int, num_devices: int):
    """Compiles value_and_grad (w.r.t. both towers' embeddings, t and b) of one loss."""
    name, kwargs = LOSS_VARIANTS[variant]
    mesh = _mesh(num_devices)
    loss_fn = create_loss(name, mesh=mesh, batch_axes=("data",), **kwargs)
    rows = NamedSharding(mesh, PartitionSpec("data"))
    scalar = NamedSharding(mesh, PartitionSpec())
    emb = jax.ShapeDtypeStruct((global_batch, dim), jnp.float32, sharding=rows)
    s = jax.ShapeDtypeStruct((), jnp.float32, sharding=scalar)

    def objective(zimg, ztxt, t, b):
        return loss_fn(zimg, ztxt, t, b)[0]

    grad = jax.value_and_grad(objective, argnums=(0, 1, 2, 3))
    return jax.jit(grad).lower(emb, emb, s, s).compile()


def loss_memory(variant: str, local_batch: int, num_devices: int, dim: int) -> dict[str, Any]:
    """Per-device temporary and argument bytes of one loss's value_and_grad."""
    analysis = compile_loss_grad(variant, local_batch * num_devices, dim,
                                 num_devices).memory_analysis()
    return {
        "bench": "loss_memory", "loss": variant, "local_batch": local_batch,
        "global_batch": local_batch * num_devices, "devices": num_devices, "dim": dim,
        "temp_bytes": int(analysis.temp_size_in_bytes),
        "argument_bytes": int(analysis.argument_size_in_bytes),
    }


def loss_memory_table(variants: Iterable[str], local_batches: Iterable[int],
                      device_counts: Iterable[int], dim: int) -> Iterator[dict[str, Any]]:
    for variant in variants:
        for b in local_batches:
            for n in device_counts:
                yield loss_memory(variant, b, n, dim)


def _fits(variant: str, global_batch: int, dim: int, num_devices: int, budget: float) -> bool:
    analysis = compile_loss_grad(variant, global_batch, dim, num_devices).memory_analysis()
    return analysis.temp_size_in_bytes + analysis.argument_size_in_bytes <= budget


def max_batch(variant: str, memory_gb: float, num_devices: int, dim: int,
              start: int | None = None, limit: int = 1 << 24) -> dict[str, Any]:
    """Largest global batch (a multiple of num_devices) whose per-device temp + argument
    bytes fit `memory_gb`: doubling until it does not fit, then bisecting."""
    budget = memory_gb * 2**30
    step = num_devices  # batches must split evenly over the devices
    lo, hi = 0, max(start or step, step)
    while hi <= limit and _fits(variant, hi, dim, num_devices, budget):
        lo, hi = hi, hi * 2
    hi = min(hi, limit + step)
    while hi - lo > step:
        mid = (lo + hi) // 2 // step * step
        if _fits(variant, mid, dim, num_devices, budget):
            lo = mid
        else:
            hi = mid
    return {"bench": "max_batch", "loss": variant, "memory_gb": memory_gb,
            "devices": num_devices, "dim": dim, "max_global_batch": lo}
