"""Device mesh from the config, and the shardings a train step needs."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from contrastive_jax.errors import ConfigError

# Axis order is fixed so that a config only says sizes. Batch axes split the examples.
AXIS_ORDER = ("data", "fsdp", "model")
BATCH_AXES = ("data", "fsdp")
_AUTO = (AxisType.Auto,) * len(AXIS_ORDER)
# Keys of the config's `mesh` group that are not axis sizes (see parallel/sharding.py).
SHARDING_KEYS = ("rules", "fsdp_min_size")


def mesh_shape(axis_sizes: Mapping[str, int], num_devices: int) -> dict[str, int]:
    """Resolves one -1 entry to the devices left over; checks the product. The sizes are the
    config's `mesh.*` keys, so a bad one is a ConfigError naming them."""
    unknown = set(axis_sizes) - set(AXIS_ORDER) - set(SHARDING_KEYS)
    if unknown:
        raise ConfigError(f"config key 'mesh': unknown mesh axes {sorted(unknown)}; known: "
                          f"{list(AXIS_ORDER)}")
    sizes = {name: int(axis_sizes.get(name, 1)) for name in AXIS_ORDER}
    free = [name for name, size in sizes.items() if size == -1]
    if len(free) > 1:
        raise ConfigError(f"config keys {[f'mesh.{n}' for n in free]}: at most one mesh axis "
                          "may be -1")
    fixed = int(np.prod([s for s in sizes.values() if s != -1]))
    if free:
        if num_devices % fixed:
            raise ConfigError(f"config key 'mesh': {num_devices} devices do not divide into "
                              f"mesh axes {sizes}")
        sizes[free[0]] = num_devices // fixed
    if int(np.prod(list(sizes.values()))) != num_devices:
        raise ConfigError(f"config key 'mesh': mesh {sizes} needs "
                          f"{np.prod(list(sizes.values()))} devices, have {num_devices}")
    return sizes


def create_mesh(axis_sizes: Mapping[str, int], devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A mesh with axes ('data', 'fsdp', 'model'); sizes from the config (-1 = the rest).

    `axis_sizes` may be the config's whole `mesh` group; its sharding keys are ignored here.
    """
    devices = list(jax.devices() if devices is None else devices)
    sizes = mesh_shape(axis_sizes, len(devices))
    shape = tuple(sizes[name] for name in AXIS_ORDER)
    if devices == list(jax.devices()):
        # Topology-aware placement on real hardware (TPU torus, NVLink islands).
        # Auto axes: XLA propagates shardings; explicit sharding-in-types is not used here.
        return jax.make_mesh(shape, AXIS_ORDER, devices=devices, axis_types=_AUTO)
    return Mesh(np.asarray(devices).reshape(shape), AXIS_ORDER, axis_types=_AUTO)


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (example) dimension split over the batch axes; the rest replicated."""
    return NamedSharding(mesh, PartitionSpec(BATCH_AXES))


# libtpu flags that turn off XLA's windowed einsum ("collective matmul"): instead of one
# all-gather of a weight that FSDP splits, the SPMD partitioner loops over the weight's shards,
# and each of those loops builds its whole [rows, tokens, hidden] output in a buffer of its
# own. With GradCache micro-batches and remat on TPU that cost more HBM than FSDP saved
# (docs/benchmarks.md, So400m/14 on v4-32); with the plain all-gathers the compiler still
# overlaps the gathers with other layers' compute.
TPU_FSDP_COMPILER_OPTIONS = {"xla_tpu_enable_windowed_einsum_for_all_gather": False,
                             "xla_tpu_enable_windowed_einsum_for_reduce_scatter": False}


def compiler_options(mesh: Mesh) -> dict[str, bool] | None:
    """XLA options for a step jitted over `mesh`: on TPU with an `fsdp` axis, no windowed
    einsum (see TPU_FSDP_COMPILER_OPTIONS); otherwise none. Other backends do not know
    these flags."""
    if mesh.shape.get("fsdp", 1) == 1 or mesh.devices.flat[0].platform != "tpu":
        return None
    return dict(TPU_FSDP_COMPILER_OPTIONS)


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def batch_size_per_process(global_batch: int, mesh: Mesh, key: str = "train.batch_size") -> int:
    """Examples each process loads; checks the global batch (config key `key`) splits evenly
    over devices."""
    num_shards = int(np.prod([mesh.shape[a] for a in BATCH_AXES]))
    if global_batch % num_shards:
        raise ConfigError(f"config key {key!r}: global batch {global_batch} does not divide "
                          f"over {num_shards} batch shards of mesh {dict(mesh.shape)}")
    if global_batch % jax.process_count():
        raise ConfigError(f"config key {key!r}: global batch {global_batch} does not divide "
                          f"over {jax.process_count()} processes")
    return global_batch // jax.process_count()


def process_rows(array: np.ndarray) -> np.ndarray:
    """This process's contiguous slice of a global batch's rows (every process holds all)."""
    if len(array) % jax.process_count():
        raise ValueError(f"{len(array)} rows do not split over {jax.process_count()} processes")
    size = len(array) // jax.process_count()
    return array[jax.process_index() * size:(jax.process_index() + 1) * size]


def to_global(local_batch: Mapping[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """Turns this process's slice of the batch into global arrays sharded over the mesh."""
    sharding = batch_sharding(mesh)
    return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
            for k, v in local_batch.items()}
