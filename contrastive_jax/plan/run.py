"""`plan`'s work: compile the config for a target, say whether it fits, find a setting that
does (checked by compiling it). The largest global batch is max_batch.py's."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import ml_collections

from contrastive_jax.models.registry import DEFAULT_MODEL
from contrastive_jax.objectives import objective_of
from contrastive_jax.plan.compile import compile_step, target_devices
from contrastive_jax.plan.report import GiB, plan_row
from contrastive_jax.plan.topology import Target

Log = Callable[[str], None]


def plan(config: ml_collections.ConfigDict, target: Target, name: str,
         devices: list | None = None) -> dict[str, Any]:
    """One compile of the config's step for the target: the plan row (see report.plan_row)."""
    devices = target_devices(target) if devices is None else devices
    return plan_row(config, target, compile_step(config, devices), name)


def _variants(config: ml_collections.ConfigDict) -> Iterator[dict[str, Any]]:
    """Memory-saving settings to try, cheapest first: rematerialise every block; shard the
    params and AdamW's moments over all chips (FSDP) instead of replicating them; then
    GradCache micro-batches (objectives that take them), without and with FSDP."""
    remat = {} if config.model.remat != "none" else {"model.remat": "full"}
    fsdp = ([{"mesh.data": 1, "mesh.fsdp": -1}]
            if config.mesh.fsdp == 1 and config.mesh.model == 1 else [])
    if remat:
        yield remat
    for shard in fsdp:
        yield {"model.remat": "full", **shard}
    objective = objective_of(config.model.get("name", DEFAULT_MODEL))
    train = config.train
    if (objective.takes_microbatches and not train.embedding_cache.enabled
            and not train.mixup.enabled):
        for k in (2, 4, 8, 16):
            if k > config.train.microbatches:
                for shard in ({}, *fsdp):
                    yield {"model.remat": "full", "train.microbatches": k, **shard}


def with_overrides(config: ml_collections.ConfigDict,
                   overrides: dict[str, Any]) -> ml_collections.ConfigDict:
    new = config.copy_and_resolve_references()
    for key, value in overrides.items():
        group, leaf = key.split(".")
        new[group][leaf] = value
    return new


def suggest(config: ml_collections.ConfigDict, target: Target, name: str, devices: list,
            log: Log) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """The first setting of `_variants` whose step fits, with its plan row; None if none."""
    for overrides in _variants(config):
        variant = with_overrides(config, overrides)
        if variant.train.batch_size % variant.train.microbatches:
            continue
        log(f"trying {overrides} ...")
        row = plan(variant, target, name, devices)
        if row["fits"]:
            return overrides, row
    return None


def not_fit_message(row: dict[str, Any], fix: tuple[dict, dict] | None,
                    tried: bool = True) -> str:
    """One line: the chip, the bytes needed and the bytes there are, and what would fit."""
    needed = row.get("needed_bytes")
    what = ("more than it has" if needed is None else
            f"{needed / GiB:.2f} GiB" + ("" if "temp_bytes" in row else
                                         " (temporaries alone, by the compiler)"))
    line = (f"does not fit: {row['plan']} at global batch {row['global_batch']} on "
            f"{row['topology']} needs {what} per {row['chip']} chip, which has "
            f"{row['hbm_bytes'] / GiB:.2f} GiB")
    if fix is None:
        return line + ("; no remat / micro-batch setting tried fits either (use more chips)"
                       if tried else "")
    overrides, fixed = fix
    flags = " ".join(f"--config.{k}={v}" for k, v in overrides.items())
    return line + f"; fits with {flags} ({fixed['needed_bytes'] / GiB:.2f} GiB, compiled)"

