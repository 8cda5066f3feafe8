"""Compile the loop's own train step for a target's devices, from shapes alone.

Params, optimizer state and batch are `jax.ShapeDtypeStruct`s carrying the shardings our rules
give them on a mesh of the target's compile-only devices; the step is the loop's
(`train_step_from_config`). Nothing is allocated on any device.
"""

from __future__ import annotations

import dataclasses
import glob
import importlib.metadata
import os
import re
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from contrastive_jax.bench.train_step import batch_shapes
from contrastive_jax.errors import ConfigError
from contrastive_jax.models.state import ModelDef, TrainState, abstract_state, state_shardings
from contrastive_jax.parallel.mesh import AXIS_ORDER, batch_sharding, mesh_shape
from contrastive_jax.plan.topology import Target
from contrastive_jax.train.lock import lock_patterns, split_params
from contrastive_jax.train.optimizer import create_optimizer
from contrastive_jax.train.step import train_step_from_config

# libtpu's start-up on a host without TPUs: no metadata server to ask, this host alone, and
# other processes (test workers, a second plan) may hold libtpu too.
_LIBTPU_ENV = {"TPU_SKIP_MDS_QUERY": "1", "TPU_WORKER_HOSTNAMES": "localhost",
               "ALLOW_MULTIPLE_LIBTPU_LOAD": "1"}


def libtpu_version() -> str | None:
    try:
        return importlib.metadata.version("libtpu")
    except importlib.metadata.PackageNotFoundError:
        return None


def lockstep_problem() -> str | None:
    """One line naming the versions when jax, jaxlib and libtpu are not the set jax's own
    `tpu` extra pins (None when they are)."""
    from packaging.requirements import Requirement

    jax_version, jaxlib_version = jax.__version__, importlib.metadata.version("jaxlib")
    libtpu = libtpu_version()
    wanted = [Requirement(r) for r in importlib.metadata.requires("jax") or ()]
    pins = {r.name: r.specifier for r in wanted
            if r.marker is not None and r.marker.evaluate({"extra": "tpu"})}
    ok = (libtpu is not None and pins.get("libtpu", None) is not None
          and pins["libtpu"].contains(libtpu, prereleases=True)
          and pins.get("jaxlib") is not None and pins["jaxlib"].contains(jaxlib_version))
    if ok:
        return None
    return (f"warning: jax {jax_version}, jaxlib {jaxlib_version} and libtpu {libtpu} are not in "
            f"lockstep (jax[tpu] pins libtpu{pins.get('libtpu', '?')}, "
            f"jaxlib{pins.get('jaxlib', '?')}): install contrastive_jax[tpu]")


def _gpu_devices(target: Target) -> list:
    """Compile-only GPUs from jax's CUDA plugin and the target's XLA config (jax's
    tests/aot_test.py). Autotuning needs a real GPU: XLA_FLAGS must carry
    --xla_gpu_autotune_level=0 before jax starts (the CLI sets it)."""
    import importlib.util

    from jax.experimental import topologies

    if (importlib.util.find_spec("jax_plugins") is None
            or importlib.util.find_spec("jax_plugins.xla_cuda12") is None):
        raise ConfigError(
            f"--topology {target.name}: compiling for a GPU needs jax's CUDA plugin and a PTX "
            f"compiler: pip install jax-cuda12-plugin=={jax.__version__} "
            f"jax-cuda12-pjrt=={jax.__version__} nvidia-cuda-nvcc-cu12 nvidia-nvjitlink-cu12 "
            "nvidia-cuda-runtime-cu12 (about 700 MB)")
    return topologies.get_topology_desc(**target.topology_kwargs()).devices


def target_devices(target: Target) -> list:
    """The target's compile-only devices (one per chip, every slice's)."""
    from jax.experimental import topologies

    if target.platform == "cuda":
        return _gpu_devices(target)
    if libtpu_version() is None:
        raise ConfigError(f"--topology {target.name}: compiling for a TPU needs libtpu; "
                          "install it with `pip install -e .[tpu]`")
    for key, value in _LIBTPU_ENV.items():
        os.environ.setdefault(key, value)
    if not glob.glob("/dev/accel*") and not glob.glob("/dev/vfio/[0-9]*"):
        # No TPU here: name the target, or libtpu prints that it could not find one.
        os.environ.setdefault("TPU_ACCELERATOR_TYPE", target.name.split()[-1])
    return topologies.get_topology_desc(target.jax_name, **target.topology_kwargs()).devices


def plan_mesh(config: ml_collections.ConfigDict, devices: list) -> Mesh:
    """The config's ('data', 'fsdp', 'model') mesh over the target's devices, laid out on
    its torus by jax's mesh utilities as `create_mesh` does on real hardware. Over several
    slices, `data` spans them (the only axis whose collectives cross the slower DCN)."""
    from jax.experimental import mesh_utils

    sizes = mesh_shape(config.mesh, len(devices))
    shape = tuple(sizes[a] for a in AXIS_ORDER)
    auto = (AxisType.Auto,) * len(AXIS_ORDER)
    slices = len({getattr(d, "slice_index", 0) for d in devices})
    if slices == 1:
        return jax.make_mesh(shape, AXIS_ORDER, devices=devices, axis_types=auto)
    if sizes["data"] % slices:
        raise ConfigError(f"config key 'mesh.data': {sizes['data']} does not split over "
                          f"{slices} slices")
    per_slice = (sizes["data"] // slices, *shape[1:])
    grid = mesh_utils.create_hybrid_device_mesh(per_slice, (slices, 1, 1), devices)
    return Mesh(grid, AXIS_ORDER, axis_types=auto)


def abstract_step_inputs(config: ml_collections.ConfigDict, mesh: Mesh, tx) -> tuple[
        TrainState, TrainState, dict[str, jax.ShapeDtypeStruct]]:
    """(state shapes with shardings, the shardings, batch shapes with shardings): the train
    state as `create_train_state` would make it, by `jax.eval_shape` alone."""
    def init(rng: jax.Array) -> TrainState:
        params, rest = ModelDef.init(config.model, rng)
        trainable, _ = split_params(params, lock_patterns(config.train.locked))
        return TrainState(step=jnp.zeros((), jnp.int32), params=params, rest=rest,
                          opt_state=tx.init(trainable))

    shapes = jax.eval_shape(init, jax.random.key(config.seed))
    shardings = state_shardings(shapes, mesh, config.mesh)
    rows = batch_sharding(mesh)
    batch = {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=rows)
             for k, v in batch_shapes(config, config.train.batch_size).items()}
    return abstract_state(shapes, shardings), shardings, batch


@dataclasses.dataclass
class Compiled:
    """A compile's outcome: the executable, or the compiler's out-of-memory message."""

    mesh: Mesh
    state: TrainState
    executable: Any = None
    out_of_memory: str | None = None
    compile_s: float = 0.0
    usable_hbm_bytes: int | None = None  # what the TPU compiler lets one program use


def compile_step(config: ml_collections.ConfigDict, devices: list) -> Compiled:
    """Lowers and compiles the loop's step for `devices`. A program the chip's memory cannot
    hold comes back with the compiler's RESOURCE_EXHAUSTED message instead of raising."""
    mesh = plan_mesh(config, devices)
    shards = mesh.shape["data"] * mesh.shape["fsdp"]
    if config.train.batch_size % shards:
        raise ConfigError(f"config key 'train.batch_size': {config.train.batch_size} does not "
                          f"split over {shards} batch shards of mesh {dict(mesh.shape)}")
    usable = usable_hbm_bytes(devices[0])
    tx, _ = create_optimizer(config.optimizer, config.train.steps)
    state, shardings, batch = abstract_step_inputs(config, mesh, tx)
    step = train_step_from_config(config, mesh, tx, shardings)
    start = time.perf_counter()
    lowered = step.lower(state, batch)
    try:
        executable = lowered.compile()
    except jax.errors.JaxRuntimeError as e:
        if "RESOURCE_EXHAUSTED" not in str(e):
            raise
        return Compiled(mesh, state, out_of_memory=str(e),
                        compile_s=time.perf_counter() - start, usable_hbm_bytes=usable)
    return Compiled(mesh, state, executable, compile_s=time.perf_counter() - start,
                    usable_hbm_bytes=usable)


# More bytes than any chip has: the compiler's refusal of a program that size names the HBM
# it lets one program use.
_LARGER_THAN_ANY_CHIP = 2**40
_usable_seen: dict[Any, int | None] = {}


def usable_hbm_bytes(device: Any) -> int | None:
    """The HBM the TPU compiler lets one program use on `device`'s chip, read from its
    refusal of a program larger than any chip (libtpu 0.0.42: 30.75 GiB of v4's 32 GiB,
    15.75 of v5e's 16, 31.25 of v6e's 32: the runtime keeps the rest). A compiled step
    within the chip's HBM but over this fails at load time. None off TPU."""
    if device.platform != "tpu":
        return None
    key = (device.device_kind, getattr(device, "num_cores", None))  # megacore or not
    if key not in _usable_seen:
        sharding = NamedSharding(Mesh(np.array([device]), ("chip",)), PartitionSpec())
        scalar = jax.ShapeDtypeStruct((), jnp.int8, sharding=sharding)
        try:
            jax.jit(lambda v: jnp.full((_LARGER_THAN_ANY_CHIP,), v),
                    out_shardings=sharding).lower(scalar).compile()
            _usable_seen[key] = None  # not refused: no figure to read
        except jax.errors.JaxRuntimeError as e:
            if "RESOURCE_EXHAUSTED" not in str(e):
                raise
            _usable_seen[key] = oom_bytes(str(e))[1]
    return _usable_seen[key]


_SIZE = r"([\d.]+)\s*([KMGT]?)i?B?"
_UNITS = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


def oom_bytes(message: str) -> tuple[int | None, int | None]:
    """(bytes needed, bytes available) from libtpu's RESOURCE_EXHAUSTED message, e.g. "the
    total memory required for HLO temporaries (156.75G) exceeds available HBM (30.75G)"."""
    def size(pattern: str) -> int | None:
        match = re.search(pattern, message)
        return None if match is None else int(float(match.group(1)) * _UNITS[match.group(2)])

    return (size(rf"required[^(]*\({_SIZE}\)"),
            size(rf"available HBM \({_SIZE}\)"))
