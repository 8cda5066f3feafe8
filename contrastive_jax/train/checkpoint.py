"""Orbax checkpoints of the train state, with the metadata needed to resume and to refuse."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from jax.sharding import Mesh

from contrastive_jax.errors import InputNotFoundError, UserError
from contrastive_jax.parallel import distributed
from contrastive_jax.parallel.mesh import create_mesh
from contrastive_jax.train.state import TrainState, abstract_state, weights_state_shapes
from contrastive_jax.workdir_config import load_workdir_config


class CheckpointMismatchError(UserError):
    """The workdir holds checkpoints of a different model; one-line message."""


def _model_signature(config: ml_collections.ConfigDict) -> dict[str, Any]:
    # What must match for a checkpoint to be restorable into this run's state. The compute
    # dtype is free to change between runs: params are stored in float32 either way.
    model = json.loads(json.dumps(config.model.to_dict(), default=str))
    model.pop("dtype", None)
    return model


def _fill_defaults(signature: dict, defaults: dict) -> dict:
    """`signature` with every key it lacks taken from `defaults` (recursively).

    Checkpoints written before a model option existed did not record it; they were made
    with its default behaviour, so they stay restorable by newer code.
    """
    out = dict(signature)
    for key, value in defaults.items():
        if key not in out:
            out[key] = value
        elif isinstance(out[key], dict) and isinstance(value, dict):
            out[key] = _fill_defaults(out[key], value)
    return out


def _default_signature(name: str) -> dict[str, Any]:
    from contrastive_jax.models.registry import default_model_config

    try:
        defaults = default_model_config(name)
    except (KeyError, ValueError):  # a model this version does not know: nothing to fill
        return {}
    return _model_signature(ml_collections.ConfigDict({"model": defaults}))


class Checkpointer:
    """Saves every `every` steps (asynchronously), keeps `keep`, restores the latest."""

    def __init__(self, workdir: str, config: ml_collections.ConfigDict):
        self.directory = os.path.abspath(os.path.join(workdir, "checkpoints"))
        self.config = config
        options = ocp.CheckpointManagerOptions(
            max_to_keep=config.train.keep_checkpoints,
            save_interval_steps=config.train.checkpoint_every,
            enable_async_checkpointing=config.train.async_checkpointing,
            create=True,
        )
        self.manager = ocp.CheckpointManager(self.directory, options=options)

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, state: TrainState, *, examples_seen: int, force: bool = False,
             extra: dict[str, Any] | None = None,
             stream: Callable[[], Any] | None = None) -> bool:
        """Starts a save when the interval says so (or `force`); returns whether it did.
        `extra`: a pytree of arrays the run needs besides the state to resume exactly.
        `stream`: called only when a save starts, for the input stream's JSON-able state
        (saved as meta["stream"]); it may run a collective, since every process decides
        alike."""
        step = int(state.step)
        if step in self.manager.all_steps():
            return False  # e.g. the final save right after an interval save of the same step
        if not force and not self.manager.should_save(step):
            return False
        meta = {"step": step, "examples_seen": examples_seen,
                "model": _model_signature(self.config)}
        if stream is not None:
            meta["stream"] = stream()
        items = {"state": ocp.args.StandardSave(state), "meta": ocp.args.JsonSave(meta)}
        if extra is not None:
            items["extra"] = ocp.args.StandardSave(extra)
        return self.manager.save(step, args=ocp.args.Composite(**items), force=force)

    def restore_extra(self, step: int, target: dict[str, Any]) -> dict[str, Any] | None:
        """The `extra` saved with `step`, shaped and sharded like `target`; None when that
        checkpoint has none (e.g. written before the feature that needs it was on)."""
        if "extra" not in self.manager.item_metadata(step):
            return None
        target = abstract_state(target, jax.tree.map(lambda x: x.sharding, target))
        return self.manager.restore(step, args=ocp.args.Composite(
            extra=ocp.args.StandardRestore(target)))["extra"]

    def restore(self, state: TrainState, shardings: TrainState,
                step: int | None = None) -> tuple[TrainState, dict[str, Any]]:
        """Restores `step` (default: latest) into the shardings of `state`."""
        step = self.latest_step() if step is None else step
        meta = self._checked_meta(step)
        target = abstract_state(state, shardings)
        restored = self._restore_state(step, ocp.args.StandardRestore(target))
        return restored, meta

    def restore_weights(self, shapes: TrainState, shardings: TrainState,
                        step: int | None = None) -> tuple[TrainState, dict[str, Any]]:
        """Step, params and model state of `step` (default: latest), without reading the
        optimizer state (2x the params under Adam): for evaluation and export.
        `shapes`/`shardings` from `state.weights_state_shapes`. Use a Checkpointer for
        either this or `restore`/`save`: orbax binds one reader to the item. A missing
        checkpoint is an InputNotFoundError naming the steps there are."""
        steps = sorted(self.manager.all_steps())
        if not steps:
            raise InputNotFoundError(f"no checkpoint in {self.directory}")
        if step is not None and step not in steps:
            raise InputNotFoundError(f"no checkpoint for step {step} in {self.directory} "
                                     f"(have {steps})")
        step = steps[-1] if step is None else step
        meta = self._checked_meta(step)
        target = abstract_state(shapes, shardings)
        item = {"step": target.step, "params": target.params, "rest": target.rest}
        restored = self._restore_state(step, ocp.args.PyTreeRestore(
            item=item, restore_args=ocp.checkpoint_utils.construct_restore_args(item),
            partial_restore=True))
        return TrainState(opt_state=None, **restored), meta

    def _checked_meta(self, step: int) -> dict[str, Any]:
        """The checkpoint's metadata, after checking its model against this config's."""
        meta = self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
        meta = meta["meta"]
        theirs, ours = meta.get("model") or {}, _model_signature(self.config)
        theirs = _fill_defaults(theirs, _default_signature(theirs.get("name", "two_tower")))
        if theirs != ours:
            diff = sorted(_diff_keys(theirs, ours))
            raise CheckpointMismatchError(
                f"checkpoints in {self.directory} were written by a different model "
                f"(model keys differ: {', '.join(diff[:5])}); use a new --workdir")
        return meta

    def _restore_state(self, step: int, args: ocp.args.CheckpointArgs) -> Any:
        try:
            return self.manager.restore(step, args=ocp.args.Composite(state=args))["state"]
        except (ValueError, KeyError) as e:
            raise CheckpointMismatchError(
                f"checkpoint {step} in {self.directory} does not fit this run's state: "
                f"{str(e).splitlines()[0][:200]}") from e

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


def _diff_keys(a: dict, b: dict, prefix: str = "model.") -> list[str]:
    keys = []
    for k in set(a) | set(b):
        va, vb = a.get(k), b.get(k)
        if isinstance(va, dict) and isinstance(vb, dict):
            keys += _diff_keys(va, vb, f"{prefix}{k}.")
        elif va != vb:
            keys.append(f"{prefix}{k}")
    return keys


class RestoredWeights(NamedTuple):
    """A workdir's weights: its config, the mesh they lie on, the state (no optimizer)."""

    config: ml_collections.ConfigDict
    mesh: Mesh
    state: TrainState  # step, params, rest; opt_state is None


def restore_weights(workdir: str, step: int | None = None, *, mesh: Mesh | None = None,
                    overrides: Sequence[str] = ()) -> RestoredWeights:
    """THE weights restore (eval, export, `data score` / `data dedup`, `train.init_from`):
    step, params and model state of `workdir`'s checkpoint `step` (default: the newest, as
    `Checkpointer.restore_weights` chooses), read with that run's own config after
    `key=value` `overrides`; never the optimizer state.

    `mesh`: where the weights go; default, the config's mesh over every device, after
    joining the distributed job the config describes (as eval does). `single_device_mesh()`
    puts them on one local device, for a host copy (`restore_params`).
    """
    config = load_workdir_config(workdir, overrides)
    if mesh is None:
        distributed.initialize(config)
        mesh = create_mesh(config.mesh)
    shapes, shardings = weights_state_shapes(config, mesh)
    checkpointer = Checkpointer(workdir, config)
    try:
        state, _ = checkpointer.restore_weights(shapes, shardings, step=step)
    finally:
        checkpointer.close()
    return RestoredWeights(config, mesh, state)


def single_device_mesh() -> Mesh:
    """A mesh of this process's first device, every axis of size 1."""
    return create_mesh({}, devices=jax.local_devices()[:1])


def restore_params(workdir: str, step: int | None = None) -> tuple[ml_collections.ConfigDict,
                                                                   dict, int]:
    """(config, params as a nested dict of host numpy arrays, step): `restore_weights` onto
    one device, for the exporters and `train.init_from`."""
    config, _, state = restore_weights(workdir, step, mesh=single_device_mesh())
    return config, jax.tree.map(np.asarray, jax.device_get(state.params)), int(state.step)
