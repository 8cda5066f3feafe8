"""A model from a SPEC, the one loader of every command that reads a model (eval, embed).

SPEC is a training workdir (`--step` picks a checkpoint), a native export directory
(`contrastive-jax export` output), `big_vision:FILE.npz` (with a sentencepiece model),
`hf:DIR` (a transformers SiglipModel / CLIPModel) or `open_clip:DIR` (an open_clip
local-dir model).
Each comes back as the same `LoadedModel`: its config, weights on the mesh, and the text
encoder that tokenises exactly as the model was trained (its recorded conventions).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
from jax.sharding import Mesh

from contrastive_jax import paths
from contrastive_jax.config import (
    apply_overrides,
    default_config,
    load_config_file,
    merge_into,
    validate,
)
from contrastive_jax.data.text_conventions import for_model
from contrastive_jax.errors import ConfigError, InputNotFoundError
from contrastive_jax.export.native import CONFIG_FILE as EXPORT_CARD
from contrastive_jax.models.state import ModelDef, TrainState
from contrastive_jax.parallel.mesh import create_mesh, replicated

BIG_VISION_PREFIX = "big_vision:"


class LoadedModel(NamedTuple):
    config: ml_collections.ConfigDict  # the model's run config (evals: the suite's, if given)
    model_def: ModelDef
    state: TrainState  # step, params, rest on `mesh`; no optimizer state
    mesh: Mesh
    text_encoder: Any  # Tokenizer (or TextRenderer for CLIPPO): texts -> model input
    step: int
    source: str  # the SPEC as given
    home: str  # where reports go by default: the workdir, export dir, or the .npz's folder


def _split(overrides: Sequence[str]) -> tuple[list[str], list[str]]:
    """(model overrides, `evals.*` overrides): the latter apply after a suite config."""
    evals = [o for o in overrides if o.startswith("evals.")]
    return [o for o in overrides if not o.startswith("evals.")], evals


def _use_suite(config: ml_collections.ConfigDict, suite_spec: str | None,
               evals_overrides: Sequence[str]) -> None:
    """The suite file's `evals` replace the model's own; then `evals.*` overrides."""
    if suite_spec:
        suite = load_config_file(suite_spec)
        if "evals" not in suite:
            raise ConfigError(f"config file {suite_spec} sets no 'evals' (the tasks to run)")
        config.evals = default_config().evals
        merge_into(config.evals, suite["evals"], prefix="evals.")
    apply_overrides(config, evals_overrides)
    validate(config)


def _on_mesh(config: ml_collections.ConfigDict, params: dict, step: int
             ) -> tuple[Mesh, TrainState]:
    mesh = create_mesh(config.mesh)
    _, rest = ModelDef.init(config.model, jax.random.key(0))
    params = jax.device_put(jax.tree.map(jnp.asarray, params), replicated(mesh))
    return mesh, TrainState(step=jnp.asarray(step, jnp.int32), params=params, rest=rest,
                            opt_state=None)


def _workdir(path: str, step: int | None, overrides: list[str]):
    from contrastive_jax.checkpoints.store import restore_weights
    from contrastive_jax.data.tokenizer_setup import workdir_tokenizer

    config, mesh, state = restore_weights(path, step, overrides=overrides)
    return config, mesh, state, workdir_tokenizer(config, path), path


def _export(path: str, overrides: list[str]):
    from contrastive_jax.data.text_conventions import use_conventions
    from contrastive_jax.export.native import card_conventions, load_exported

    card, params, tokenizer = load_exported(path)
    config = default_config()
    merge_into(config, card["train_config"])
    use_conventions(config, card_conventions(card))  # the card is the record
    apply_overrides(config, overrides)
    tokenizer = tokenizer.with_conventions(for_model(config))  # --config.data.pad_id=... wins
    mesh, state = _on_mesh(config, params, int(card["step"]))
    return config, mesh, state, tokenizer, path


def _big_vision(path: str, tokenizer_path: str | None, suite_spec: str | None,
                overrides: list[str]):
    from contrastive_jax.export.big_vision import big_vision_model

    if tokenizer_path is None:
        raise ConfigError(f"{BIG_VISION_PREFIX}{path} needs --tokenizer (the checkpoint's "
                          "sentencepiece model)")
    config = default_config()
    if suite_spec:  # a full run config (data, evals) for the imported model
        merge_into(config, {k: v for k, v in load_config_file(suite_spec).items()
                            if k != "model"})
    params, tokenizer = big_vision_model(path, tokenizer_path, config, overrides)
    mesh, state = _on_mesh(config, params, 0)
    return config, mesh, state, tokenizer, paths.dirname(paths.absolute(path))


def _imported(spec: str, suite_spec: str | None, overrides: list[str]):
    from contrastive_jax.export.hf_import import (
        HF_PREFIX,
        OPEN_CLIP_PREFIX,
        exported_step,
        import_model,
    )

    config = default_config()
    if suite_spec:  # a full run config (data, evals) for the imported model
        merge_into(config, {k: v for k, v in load_config_file(suite_spec).items()
                            if k != "model"})
    params, tokenizer = import_model(spec, config)
    apply_overrides(config, overrides)
    tokenizer = tokenizer.with_conventions(for_model(config))  # --config.data.pad_id=... wins
    path = spec.removeprefix(HF_PREFIX).removeprefix(OPEN_CLIP_PREFIX)
    mesh, state = _on_mesh(config, params, exported_step(path))
    return config, mesh, state, tokenizer, paths.absolute(path)


def spec_kind(spec: str) -> str:
    """"big_vision", "hf", "open_clip", "workdir" or "export": what a SPEC names
    (InputNotFoundError if none)."""
    if spec.startswith(BIG_VISION_PREFIX):
        return "big_vision"
    for kind in ("hf", "open_clip"):
        if spec.startswith(f"{kind}:"):
            return kind
    if paths.isfile(paths.join(spec, "config.json")):
        return "workdir"
    if paths.isfile(paths.join(spec, EXPORT_CARD)):
        return "export"
    raise InputNotFoundError(f"model {spec!r} is neither a training workdir, an export "
                             f"directory, {BIG_VISION_PREFIX}FILE.npz, hf:DIR nor "
                             "open_clip:DIR")


def eval_config(spec: str, *, config: str | None = None, overrides: Sequence[str] = (),
                kind: str | None = None) -> ml_collections.ConfigDict:
    """The config `load_model` would evaluate `spec` with (its data settings and the
    suite's tasks), read without loading any weights: the eval command checks every task's
    data against it before loading the model. A workdir's or export's own config; for the
    imports, the defaults with `config`'s sections, as `load_model` builds them."""
    from contrastive_jax.config.workdir import load_workdir_config
    from contrastive_jax.json_files import field, read_json

    model_overrides, evals_overrides = _split(overrides)
    kind = kind or spec_kind(spec)
    if kind == "workdir":
        run = load_workdir_config(spec, model_overrides)
    elif kind == "export":
        run, card = default_config(), paths.join(spec, EXPORT_CARD)
        if not paths.isfile(card):  # as load_exported says it
            raise InputNotFoundError(f"{spec} is not an export directory: no {EXPORT_CARD}")
        merge_into(run, field(read_json(card, "export config"), "train_config", card, dict))
    else:  # hf, open_clip, big_vision: the suite file is merged whole, model aside
        run = default_config()
        if config:
            merge_into(run, {k: v for k, v in load_config_file(config).items()
                             if k != "model"})
        # The model comes with the weights (load_model validates the two together): only
        # the data and evals settings are wanted here.
        apply_overrides(run, [o for o in overrides if not o.startswith("model.")])
        return run
    if kind == "export":
        apply_overrides(run, model_overrides)
    _use_suite(run, config, evals_overrides)
    return run


def load_model(spec: str, *, step: int | None = None, tokenizer: str | None = None,
               config: str | None = None, overrides: Sequence[str] = (),
               kind: str | None = None) -> LoadedModel:
    """The model of `spec`. `config`: a config file whose `evals` (the suite) replace the
    model's own; for big_vision, whose data and evals the imported model runs with.
    `overrides` (`key=value`) apply to the model's config, `evals.*` after the suite.
    `kind` (what `spec_kind` says; given, its reader's own errors name what is missing)."""
    model_overrides, evals_overrides = _split(overrides)
    kind = kind or spec_kind(spec)
    if step is not None and kind != "workdir":
        raise ConfigError(f"--step picks a checkpoint of a workdir, not of a {kind} model")
    suite = config
    if kind == "big_vision":
        loaded = _big_vision(spec.removeprefix(BIG_VISION_PREFIX), tokenizer, config,
                             model_overrides)
        suite = None  # its config file is merged whole
    elif kind in ("hf", "open_clip"):
        loaded = _imported(spec, config, model_overrides)
        suite = None
    elif kind == "workdir":
        from contrastive_jax.config.workdir import load_workdir_config

        # The tasks are checked before the checkpoint is read: a typo fails in a second.
        _use_suite(load_workdir_config(spec, model_overrides), suite, evals_overrides)
        loaded = _workdir(spec, step, model_overrides)
    else:
        loaded = _export(spec, model_overrides)
    run_config, mesh, state, text_encoder, home = loaded
    _use_suite(run_config, suite, evals_overrides)
    return LoadedModel(run_config, ModelDef(run_config.model), state, mesh, text_encoder,
                       int(state.step), spec, home)
