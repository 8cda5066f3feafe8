"""Multi-host start-up: `jax.distributed.initialize` from the config or the cluster's env.

Config group `distributed`:
- `enabled`: "auto" (default) joins a cluster when one is found: an explicit
  `coordinator_address`, `JAX_COORDINATOR_ADDRESS`, or an environment jax detects itself
  (Cloud TPU pod slices, SLURM, Kubernetes with the `kubernetes` package, Open MPI); otherwise
  the run is a single process. "on" always initialises and fails when nothing can be
  detected. "off" never initialises.
- `coordinator_address` ("host:port"), `num_processes` (0: detect) and `process_id`
  (-1: detect): explicit values, passed on to jax; unset ones are detected by jax.
"""

from __future__ import annotations

import logging
import os

import jax
import ml_collections
import numpy as np

log = logging.getLogger(__name__)


def detected_cluster() -> str | None:
    """The name of the cluster environment jax would auto-detect here, or None."""
    # jax keeps its detectors private; asking them (rather than re-reading SLURM_* or TPU
    # metadata ourselves) keeps "auto" in step with what initialize() would actually use.
    from jax._src import clusters

    for env in clusters.ClusterEnv._cluster_types:
        if not env.opt_in_only_method and env.is_env_present():
            return env.__name__
    return None


def _explicit_args(cfg: ml_collections.ConfigDict) -> dict[str, object]:
    args: dict[str, object] = {}
    if cfg.coordinator_address:
        args["coordinator_address"] = cfg.coordinator_address
    if cfg.num_processes > 0:
        args["num_processes"] = cfg.num_processes
    if cfg.process_id >= 0:
        args["process_id"] = cfg.process_id
    return args


def initialize(config: ml_collections.ConfigDict) -> bool:
    """Joins the multi-process job the config or environment describes, before any device
    use; returns whether this process is part of a (possibly 1-process) distributed job."""
    cfg = config.distributed
    if cfg.enabled == "off":
        return False
    if jax.distributed.is_initialized():
        return True  # e.g. a launcher or a test already did it
    args = _explicit_args(cfg)
    cluster = detected_cluster()
    coordinator = cfg.coordinator_address or os.environ.get("JAX_COORDINATOR_ADDRESS")
    if cfg.enabled == "auto" and not (coordinator or cluster):
        return False  # a single-process run; num_processes/process_id alone only override
    log.info("jax.distributed.initialize(%s) with detected cluster %s", args, cluster)
    jax.distributed.initialize(**args)
    log.info("process %d of %d, %d local of %d devices", jax.process_index(),
             jax.process_count(), jax.local_device_count(), jax.device_count())
    return True


def gathered_over_processes(values: np.ndarray) -> np.ndarray:
    """Every process's int64 array, stacked [process_count, ...] in process order, exactly;
    a collective every process calls.

    The values travel as int32 pairs: jax without x64 would truncate int64 to int32, and a
    long run's example counts pass 2**31.
    """
    values = np.ascontiguousarray(values, np.int64)
    if jax.process_count() == 1:
        return values[None]
    from jax.experimental import multihost_utils

    gathered = np.asarray(multihost_utils.process_allgather(values.view(np.int32)))
    return np.ascontiguousarray(gathered).view(np.int64)


def summed_over_processes(values: np.ndarray) -> np.ndarray:
    """An int64 array summed over all processes, exactly (see gathered_over_processes)."""
    return gathered_over_processes(values).sum(axis=0)


def summed_counters(counts: dict[str, int]) -> dict[str, int]:
    """`counts` (the same keys in every process, any order) summed over all processes.

    A collective: every process calls it at the same point (the train loop: each log step).
    """
    if not counts:  # e.g. no filter: nothing to exchange (every process has no keys)
        return {}
    names = sorted(counts)
    totals = summed_over_processes(np.array([counts[name] for name in names], np.int64))
    return {name: int(total) for name, total in zip(names, totals, strict=True)}
