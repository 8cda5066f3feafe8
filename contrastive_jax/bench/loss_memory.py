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


def compile_loss_grad(variant: str, global_batch: int, dim: int, num_devices: int,
                      mesh: Mesh | None = None, batch_axes: tuple[str, ...] = ("data",)):
    """Compiles value_and_grad (w.r.t. both towers' embeddings, t and b) of one loss, on the
    first `num_devices` devices or on `mesh` (e.g. a TPU topology's compile-only devices),
    the batch split over `batch_axes`."""
    name, kwargs = LOSS_VARIANTS[variant]
    mesh = _mesh(num_devices) if mesh is None else mesh
    loss_fn = create_loss(name, mesh=mesh, batch_axes=batch_axes, **kwargs)
    rows = NamedSharding(mesh, PartitionSpec(batch_axes))
    scalar = NamedSharding(mesh, PartitionSpec())
    emb = jax.ShapeDtypeStruct((global_batch, dim), jnp.float32, sharding=rows)
    s = jax.ShapeDtypeStruct((), jnp.float32, sharding=scalar)

    def objective(zimg, ztxt, t, b):
        return loss_fn(zimg, ztxt, t, b)[0]

    grad = jax.value_and_grad(objective, argnums=(0, 1, 2, 3))
    return jax.jit(grad).lower(emb, emb, s, s).compile()


def ring_model_bytes(local_batch: int, dim: int, tile: int = 0) -> int:
    """The unidirectional rings' per-device loss memory on >= 2 devices, float32: about
    3 b x D buffers (the chunk in flight, its gradient, the image gradient) and 4 live
    b x tile blocks (logits, similarities, their gradient, one exp; 5 with whole b x b
    blocks, which XLA schedules less tightly than the tile loop): 4 b (3 D + 4 tile)
    bytes, whatever the number of devices. Fitted to and checked against XLA's compiled
    numbers (docs/benchmarks.md: within 15%)."""
    blocks = 4 if tile and tile < local_batch else 5
    return 4 * local_batch * (3 * dim + blocks * (tile or local_batch))


def loss_memory(variant: str, local_batch: int, num_devices: int, dim: int) -> dict[str, Any]:
    """Per-device temporary and argument bytes of one loss's value_and_grad (with the
    memory model's estimate for the unidirectional rings)."""
    analysis = compile_loss_grad(variant, local_batch * num_devices, dim,
                                 num_devices).memory_analysis()
    row = {
        "bench": "loss_memory", "loss": variant, "local_batch": local_batch,
        "global_batch": local_batch * num_devices, "devices": num_devices, "dim": dim,
        "temp_bytes": int(analysis.temp_size_in_bytes),
        "argument_bytes": int(analysis.argument_size_in_bytes),
    }
    name, options = LOSS_VARIANTS[variant]
    if name.endswith("_chunked") and not options.get("bidirectional") and num_devices > 1:
        row["model_bytes"] = ring_model_bytes(local_batch, dim, options.get("tile", 0))
    return row


def model_at_scale(dim: int, tile: int = 256, global_batch: int = 2**20,
                   num_devices: int = 1024) -> dict[str, Any]:
    """The memory model's per-device loss bytes of a 1M batch on 1,024 devices."""
    local = global_batch // num_devices
    return {"bench": "loss_memory_model", "global_batch": global_batch,
            "devices": num_devices, "local_batch": local, "dim": dim, "tile": tile,
            "model_bytes": ring_model_bytes(local, dim, tile),
            "untiled_model_bytes": ring_model_bytes(local, dim)}


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
