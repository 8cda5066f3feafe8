"""Orbax checkpoints of the train state, with the metadata needed to resume and to refuse."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from jax.sharding import Mesh

from contrastive_jax import paths
from contrastive_jax.checkpoints import fingerprint, integrity
from contrastive_jax.checkpoints.array_writes import write_whole_shards_on_cpu
from contrastive_jax.config.workdir import load_workdir_config
from contrastive_jax.data import text_conventions
from contrastive_jax.errors import CheckpointError, InputNotFoundError
from contrastive_jax.models.state import TrainState, abstract_state, weights_state_shapes
from contrastive_jax.parallel import distributed
from contrastive_jax.parallel.mesh import create_mesh

log = logging.getLogger(__name__)


class CheckpointMismatchError(CheckpointError):
    """The workdir holds checkpoints of a different model; one-line message."""


def _model_signature(config: ml_collections.ConfigDict) -> dict[str, Any]:
    # What must match for a checkpoint to be restorable into this run's state. The compute
    # dtype is free to change between runs: params are stored in float32 either way.
    model = json.loads(json.dumps(config.model.to_dict(), default=str))
    model.pop("dtype", None)
    if "data" in config and "text" in config.model:
        # How text becomes ids is part of the model: another pad id changes every text
        # embedding of a tower without pad mask.
        model["text_conventions"] = text_conventions.for_model(config).to_dict()
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


def _default_signature(name: str, ours: dict[str, Any] | None = None) -> dict[str, Any]:
    from contrastive_jax.models.registry import default_model_config

    try:
        defaults = default_model_config(name)
    except (KeyError, ValueError):  # a model this version does not know: nothing to fill
        return {}
    signature = _model_signature(ml_collections.ConfigDict({"model": defaults}))
    if ours and "text_conventions" in ours:  # written before conventions were recorded
        signature["text_conventions"] = text_conventions.legacy(ours["text_conventions"])
    return signature


class Checkpointer:
    """Saves every `checkpoint_every` steps (asynchronously), keeps `keep_checkpoints`, and
    restores only what reads back intact: each checkpoint's metadata holds a fingerprint
    of every array saved with it (checkpoints/fingerprint.py), checked on every restore."""

    def __init__(self, workdir: str, config: ml_collections.ConfigDict):
        # A URL stays a URL: orbax writes gs:// through tensorstore and etils.epath.
        self.directory = paths.absolute(paths.join(workdir, "checkpoints"))
        self.config = config
        options = ocp.CheckpointManagerOptions(
            max_to_keep=config.train.keep_checkpoints,
            save_interval_steps=config.train.checkpoint_every,
            enable_async_checkpointing=config.train.async_checkpointing,
            create=True,
        )
        write_whole_shards_on_cpu()
        self.manager = ocp.CheckpointManager(self.directory, options=options)
        # The `train.resume_step` this run's checkpoints descend from (saved in their meta):
        # a relaunch with the same command continues them instead of going back again.
        self._resumed_from: int | None = None
        self._closed = False
        integrity.quiet_abandoned_reads()

    def _steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def latest_step(self) -> int | None:
        """The step a resume starts from: `train.resume_step` when set, else the newest
        checkpoint; None when there is none. A `train.resume_step` that is not there is a
        CheckpointError listing the steps there are."""
        steps = self._steps()
        wanted = self._wanted_step(steps)
        return wanted if wanted is not None else (steps[-1] if steps else None)

    def _wanted_step(self, steps: list[int]) -> int | None:
        """`train.resume_step`, unless this run already went back to it (None then)."""
        wanted = self.config.train.get("resume_step")
        if wanted is None:
            return None
        newer = [s for s in steps if s > wanted]
        if newer and self._meta_or_none(newer[-1]).get("resumed_from") == wanted:
            return None
        if wanted not in steps:
            raise CheckpointError(f"config key 'train.resume_step': no checkpoint for step "
                                  f"{wanted} in {self.directory} (have {steps or 'none'})")
        return wanted

    def due(self, step: int, force: bool = False) -> bool:
        """Whether `save` at `step` starts a save (the interval says so, or `force`)."""
        if step in self.manager.all_steps():
            return False  # e.g. the final save right after an interval save of the same step
        return force or self.manager.should_save(step)

    def save(self, state: TrainState, *, examples_seen: int, force: bool = False,
             extra: dict[str, Any] | None = None,
             stream: Callable[[], Any] | None = None,
             counters: dict[str, int] | None = None) -> bool:
        """Starts a save when `due`; returns whether it did.
        `extra`: a pytree of arrays the run needs besides the state to resume exactly.
        `stream`: called only when a save starts, for the input stream's JSON-able state
        (saved as meta["stream"]); it may run a collective, since every process decides
        alike. `counters`: run totals kept in the meta (e.g. nonfinite_steps)."""
        step = int(state.step)
        if not self.due(step, force):
            return False
        meta = {"step": step, "examples_seen": examples_seen,
                "model": _model_signature(self.config), **(counters or {})}
        if stream is not None:
            meta["stream"] = stream()
        if self._resumed_from is not None:
            meta["resumed_from"] = self._resumed_from
        meta["fingerprints"] = fingerprint.fingerprints(state, "state/")  # a collective
        items = {"state": ocp.args.StandardSave(state)}
        if extra is not None:
            items["extra"] = ocp.args.StandardSave(extra)
            meta["fingerprints"].update(fingerprint.fingerprints(extra, "extra/"))
        meta["digest"] = fingerprint.digest(meta)
        items["meta"] = ocp.args.JsonSave(meta)
        return self.manager.save(step, args=ocp.args.Composite(**items), force=force)

    def restore_extra(self, step: int, target: dict[str, Any]) -> dict[str, Any] | None:
        """The `extra` saved with `step`, shaped and sharded like `target`; None when that
        checkpoint has none (e.g. written before the feature that needs it was on)."""
        if "extra" not in self.manager.item_metadata(step):
            return None
        target = abstract_state(target, jax.tree.map(lambda x: x.sharding, target))
        restored = self.manager.restore(step, args=ocp.args.Composite(
            extra=ocp.args.StandardRestore(target)))["extra"]
        bad = fingerprint.mismatches(self._meta_or_none(step).get("fingerprints") or {},
                                     restored, "extra/")
        if bad:
            raise CheckpointError(f"checkpoint {step} in {self.directory} is damaged "
                                  f"(leaf {bad[0]} differs from its fingerprint); resume "
                                  "from an older one with train.resume_step")
        return restored

    def restore(self, state: TrainState, shardings: TrainState,
                step: int | None = None) -> tuple[TrainState, dict[str, Any]]:
        """Restores `step` (default: `train.resume_step`, else the newest checkpoint that
        reads back intact) into the shardings of `state`.

        A checkpoint that fails to read or fails its fingerprint check is a one-line
        warning naming the step, the file or leaf and the cause; it moves to
        checkpoints/corrupt/ (never deleted) and, without a chosen step, the next older
        one is tried. Going back to `train.resume_step` moves the newer checkpoints to
        checkpoints/superseded/, so that this run's saves continue from there."""
        steps = self._steps()
        chosen = step if step is not None else self._wanted_step(steps)
        if chosen is not None and chosen not in steps:
            raise InputNotFoundError(f"no checkpoint for step {chosen} in {self.directory} "
                                     f"(have {steps or 'none'})")
        target = abstract_state(state, shardings)
        for candidate in [chosen] if chosen is not None else steps[::-1]:
            try:
                restored, meta = self._read(candidate, target, partial=False)
            except integrity.Unreadable as bad:
                self._move("corrupt", {candidate: self._damaged(bad)})
                continue
            if step is None and chosen is not None:  # train.resume_step: a new branch
                self._move("superseded", {s: f"train.resume_step={chosen}: checkpoint {s} "
                                             "is newer" for s in steps if s > chosen})
                self._resumed_from = chosen
            else:
                self._resumed_from = meta.get("resumed_from")
            return restored, meta
        raise CheckpointError(
            f"checkpoint {chosen} in {self.directory} is damaged; it was moved to corrupt/"
            if chosen is not None else
            f"no checkpoint in {self.directory} reads back intact; all were moved to corrupt/")

    def restore_weights(self, shapes: TrainState, shardings: TrainState,
                        step: int | None = None) -> tuple[TrainState, dict[str, Any]]:
        """Step, params and model state of `step` (default: the newest that reads back
        intact), without reading the optimizer state (2x the params under Adam): for
        evaluation and export. Checked against the fingerprints like `restore`, but
        nothing is moved: a damaged `step` is a CheckpointError; without `step`, a damaged
        newest one is a warning and the next older one is tried.
        `shapes`/`shardings` from `state.weights_state_shapes`. Use a Checkpointer for
        either this or `restore`/`save`: orbax binds one reader to the item. A missing
        checkpoint is an InputNotFoundError naming the steps there are."""
        steps = self._steps()
        if not steps:
            raise InputNotFoundError(f"no checkpoint in {self.directory}")
        if step is not None and step not in steps:
            raise InputNotFoundError(f"no checkpoint for step {step} in {self.directory} "
                                     f"(have {steps})")
        target = abstract_state(shapes, shardings)
        item = {"step": target.step, "params": target.params, "rest": target.rest}
        for candidate in [step] if step is not None else steps[::-1]:
            try:
                restored, meta = self._read(candidate, item, partial=True)
            except integrity.Unreadable as bad:
                if step is not None:
                    raise CheckpointError(self._damaged(bad)) from bad
                log.warning("%s; trying the one before it", self._damaged(bad))
                continue
            return TrainState(opt_state=None, **restored), meta
        raise CheckpointError(f"no checkpoint in {self.directory} reads back intact")

    def _read(self, step: int, target: Any, *, partial: bool) -> tuple[Any, dict[str, Any]]:
        """Checkpoint `step`'s state (all of `target`'s leaves) and meta, checked; raises
        integrity.Unreadable for damage, CheckpointMismatchError for another run's tree."""
        failure, restored, meta = None, None, {}
        try:
            meta = self._checked_meta(step)
        except integrity.Unreadable as bad:
            failure = bad
        saved = meta.get("fingerprints")
        difference = saved and fingerprint.tree_difference(saved, target, "state/", partial)
        if difference:  # another optimizer, train.locked, ...: not a damaged checkpoint
            raise self._mismatch(step, difference)
        if failure is None:
            if partial:
                args = ocp.args.PyTreeRestore(
                    item=target, partial_restore=True,
                    restore_args=ocp.checkpoint_utils.construct_restore_args(target))
            else:
                args = ocp.args.StandardRestore(target)
            try:
                restored = self.manager.restore(
                    step, args=ocp.args.Composite(state=args))["state"]
            except Exception as e:  # noqa: BLE001 - only read errors; see is_read_error
                if not integrity.is_read_error(e):
                    raise
                if saved is None and integrity.looks_like_mismatch(e):
                    raise self._mismatch(step, str(e).splitlines()[0]) from e
                failure = integrity.describe(step, e, self._step_dir(step))
        # Every process takes the same branch, even if only one of them failed to read.
        if distributed.summed_over_processes(np.array([failure is not None]))[0]:
            raise failure or integrity.Unreadable(step, "its files",
                                                  "another process failed to read them")
        bad = fingerprint.mismatches(saved, restored, "state/") if saved is not None else []
        if bad:
            more = f" and {len(bad) - 1} more" if len(bad) > 1 else ""
            raise integrity.Unreadable(step, f"leaf {bad[0].removeprefix('state/')}{more}",
                                       "its values differ from the fingerprint saved with it")
        return restored, meta

    def _mismatch(self, step: int, why: str) -> CheckpointMismatchError:
        return CheckpointMismatchError(f"checkpoint {step} in {self.directory} does not fit "
                                       f"this run's state: {why[:200]}; use a new --workdir")

    def _checked_meta(self, step: int) -> dict[str, Any]:
        """The checkpoint's metadata, after checking its digest (integrity.Unreadable) and
        its model against this config's (CheckpointMismatchError)."""
        meta = self._read_meta(step)
        theirs, ours = meta.get("model") or {}, _model_signature(self.config)
        theirs = _fill_defaults(theirs, _default_signature(theirs.get("name", "two_tower"),
                                                           ours))
        if theirs != ours:
            diff = sorted(_diff_keys(theirs, ours))
            raise CheckpointMismatchError(
                f"checkpoints in {self.directory} were written by a different model "
                f"(model keys differ: {', '.join(diff[:5])}); use a new --workdir")
        return meta

    def _read_meta(self, step: int) -> dict[str, Any]:
        try:
            meta = self.manager.restore(
                step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
        except Exception as e:  # noqa: BLE001 - only read errors; see is_read_error
            if not integrity.is_read_error(e):
                raise
            raise integrity.describe(step, e, self._step_dir(step), "meta/metadata") from e
        if not isinstance(meta, dict):
            raise integrity.Unreadable(step, "meta/metadata", "not a JSON object")
        digest = meta.pop("digest", None)  # absent in checkpoints older than digests
        if digest is not None and digest != fingerprint.digest(meta):
            raise integrity.Unreadable(step, "meta/metadata",
                                       "its content differs from the digest saved with it")
        return meta

    def saved_meta(self, step: int) -> dict[str, Any]:
        """Checkpoint `step`'s metadata, unverified beyond its digest; {} when it does not
        read back (`restore` then decides what to do with it)."""
        return self._meta_or_none(step)

    def _meta_or_none(self, step: int) -> dict[str, Any]:
        try:
            return self._read_meta(step)
        except integrity.Unreadable:
            return {}

    def _step_dir(self, step: int) -> str:
        return paths.join(self.directory, str(step))

    def _damaged(self, bad: integrity.Unreadable) -> str:
        return (f"checkpoint {bad.step} in {self.directory} is damaged "
                f"({bad.where}: {bad.cause})")

    def _move(self, kind: str, reasons: dict[int, str]) -> None:
        """Moves the steps of `reasons` to `kind`/, out of orbax's sight."""
        integrity.move_aside(self.directory, kind, reasons)
        self.manager.reload()

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        """Waits for the save in flight and closes; a second call does nothing."""
        if self._closed:
            return
        self._closed = True
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
