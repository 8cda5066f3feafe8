"""Config loading: `file.py[:k=v,...]`, `--config.a.b=v` overrides, validation against the schema.

Every key a config file or an override sets must exist in `default_config()`, with a value of
a compatible type; otherwise `ConfigError` names the key in one line.
"""

from __future__ import annotations

import ast
import copy
import importlib.util
import inspect
import json
import os
from collections.abc import Sequence
from typing import Any

import ml_collections

from contrastive_jax.config.checks import validate
from contrastive_jax.errors import ConfigError

ConfigDict = ml_collections.ConfigDict
# Keys whose value may take more than one type; `validate` checks them.
_ANY_TYPE = {"data.lowercase"}  # a bool or "unicode" / "ascii" (data/text_conventions.py)


def default_config() -> ConfigDict:
    """The full schema with defaults. Config files override parts of it."""
    from contrastive_jax.data.schema import default_cit_config, default_data_config
    from contrastive_jax.models import default_model_config
    from contrastive_jax.parallel import sharding

    c = ConfigDict()
    c.seed = 0
    c.model = default_model_config()
    c.data = default_data_config()
    # Loss names: see contrastive_jax.losses.LOSS_NAMES.
    c.loss = ConfigDict(
        dict(
            name="sigmoid_chunked",
            bidirectional=False,  # *_chunked rings: text chunks travel both ways round it
            tile=0,  # *_chunked rings: b x tile pieces of each b x b block (0: whole blocks)
            positives="pairs",  # "labels": pairs whose labels match are positives too
            hn_alpha=1.0,  # hn_nce: weight of the positive in the denominator
            hn_beta=0.5,  # hn_nce: hardness of the negative weighting (0: CLIP)
            tau_plus=0.1,  # debiased_softmax: prior rate of false negatives
            macl_beta=0.5,  # macl: temperature grows as 1 + macl_beta * alignment
            align_weight=0.0,  # alignment term added to any loss (Fahim et al.)
            uniform_weight=0.0,  # uniformity term added to any loss
        )
    )
    # Mesh axis sizes; -1 takes all devices not used by the other axes. Parameter sharding:
    # see contrastive_jax.parallel.sharding (rules: [[regex, spec], ...], first match wins).
    c.mesh = ConfigDict(dict(data=-1, fsdp=1, model=1, rules=copy.deepcopy(sharding.DEFAULT_RULES),
                             fsdp_min_size=sharding.DEFAULT_FSDP_MIN_SIZE))
    # Multi-host: "auto" joins a detected cluster (TPU pod, SLURM, Kubernetes) or the
    # coordinator below; "on" requires one; "off" runs as a single process.
    c.distributed = ConfigDict(dict(enabled="auto", coordinator_address="",
                                    num_processes=0, process_id=-1))
    c.train = ConfigDict(
        dict(
            batch_size=256,  # global batch size, over all processes and devices
            steps=1000,
            log_every=50,
            checkpoint_every=500,
            keep_checkpoints=3,
            async_checkpointing=True,
            # None: the newest checkpoint that reads back intact; N: go back to step N.
            resume_step=None,
            # A non-finite loss or gradient drops the update; skip: go on (counted in
            # train/nonfinite_steps) and stop after nonfinite_limit in a row; stop: at once.
            nonfinite="skip",
            nonfinite_limit=10,
            eval_every=0,  # 0: evaluate only at the end of training
            progress_bar=True,
            # > 1: exact GradCache accumulation; activations of batch_size / microbatches.
            microbatches=1,
            # FLIP (model.image.mask_ratio > 0): from this step on, train unmasked (the
            # paper's short unmasked tuning phase); None: mask to the end.
            unmask_from=None,
            compilation_cache_dir=None,  # persistent XLA compilation cache (a directory)
            cit=default_cit_config(),  # curation in training (contrastive_jax/train/cit.py)
            # LiT: locked params get no optimizer state, no weight decay, no backward pass.
            # image / text lock a whole tower with its head; patterns: regexes on param
            # paths like 'img/encoder/blocks/0/mlp/fc1/kernel' (see train/lock.py).
            locked=ConfigDict(dict(image=False, text=False, patterns=())),
            # Fresh runs copy params from a workdir, an export dir, an exported .npz or a
            # big_vision .npz; tower: image | text | both | all (all: with t and b too).
            # reinit: regexes of copied-tower params to keep freshly initialised;
            # drop_heads: re-initialise the selected towers' projection heads.
            init_from=ConfigDict(dict(path="", tower="both", reinit=(), drop_heads=False)),
            # Precompute the locked image tower's embeddings of the train split once and
            # train on them (the image tower is not run); dir "" -> WORKDIR/embedding_cache.
            embedding_cache=ConfigDict(dict(enabled=False, dir="")),
            # ZeroVL's coin-flipping mixup (losses/mixup.py): a step is mixed with chance
            # `probability`; a coin mixes its images (chance image_share) or else its text
            # embeddings, pairing example i with B-1-i in shares alpha ~ Beta(beta, beta).
            mixup=ConfigDict(dict(enabled=False, probability=1.0, image_share=0.5, beta=0.1)),
        )
    )
    c.optimizer = ConfigDict(
        dict(
            lr=1e-3,
            warmup_steps=100,
            end_lr_fraction=0.0,  # cosine decays to lr * end_lr_fraction
            b1=0.9,
            b2=0.999,
            eps=1e-8,
            weight_decay=1e-4,  # decoupled (AdamW); never applied to t, b, norms, biases
            grad_clip_norm=1.0,  # 0 disables clipping
        )
    )
    # A published recipe's figures (configs/recipes/*.py), which `bench recipes`
    # compares with the model's own counts; None: not a recipe.
    # hardware_paper: what the paper trained on, as published; topology_paper: that as a
    # target `plan` can compile for (its default --topology: the GPUs themselves, or a TPU
    # slice with as many chips), batch_paper: its global batch.
    c.recipe = ConfigDict(dict(params_paper=None, gflops_paper=None, image_gflops_paper=None,
                               text_gflops_paper=None, hardware_paper=None, topology_paper=None,
                               batch_paper=None))
    # The evaluation suite: [{kind, name, data: {kind, ...}, every, ...}], see
    # config/eval_tasks.py. None by default: a run evaluates the tasks its config gives.
    c.evals = ConfigDict(dict(tasks=[]))
    return c


def _parse_value(text: str) -> Any:
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text  # bare words are strings: `--config.loss.name=softmax`


def _parse_file_args(arg: str) -> dict[str, Any]:
    kwargs: dict[str, Any] = {}
    for item in filter(None, arg.split(",")):
        if "=" not in item:
            raise ConfigError(f"config argument {item!r} is not of the form key=value")
        key, value = item.split("=", 1)
        kwargs[key.strip()] = _parse_value(value.strip())
    return kwargs


def load_config_file(spec: str) -> ConfigDict:
    """Runs `get_config(**kwargs)` of the file in `spec` = `path.py[:k=v,...]`."""
    path, _, arg = spec.partition(":")
    if not os.path.isfile(path):
        raise ConfigError(f"config file not found: {path}")
    module_spec = importlib.util.spec_from_file_location("_contrastive_jax_config", path)
    module = importlib.util.module_from_spec(module_spec)
    try:
        module_spec.loader.exec_module(module)
    except Exception as e:  # noqa: BLE001 - any error in user code becomes one line
        raise ConfigError(f"config file {path} does not load: {type(e).__name__}: {e}") from e
    if not hasattr(module, "get_config"):
        raise ConfigError(f"config file {path} defines no get_config()")
    kwargs = _parse_file_args(arg)
    params = inspect.signature(module.get_config).parameters
    for key in kwargs:
        if key not in params:
            raise ConfigError(
                f"config file {path} takes no argument {key!r} (takes {list(params)})")
    try:
        return module.get_config(**kwargs)
    except ConfigError:
        raise
    except Exception as e:  # noqa: BLE001
        raise ConfigError(f"get_config() of {path} failed: {type(e).__name__}: {e}") from e


def _check_type(key: str, default: Any, value: Any) -> Any:
    """Returns `value` converted to the default's type, or raises ConfigError."""
    if default is None or value is None:
        return value
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
    elif isinstance(default, int):
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif isinstance(default, float):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif isinstance(default, str):
        if isinstance(value, str):
            return value
    elif isinstance(default, (tuple, list)):
        if isinstance(value, (tuple, list)):
            return type(default)(value)
    else:
        return value
    raise ConfigError(
        f"config key {key!r} expects {type(default).__name__}, got {value!r} "
        f"({type(value).__name__})"
    )


def merge_into(base: ConfigDict, update: ConfigDict | dict, prefix: str = "") -> None:
    """Recursively writes `update` into `base`, rejecting unknown keys and wrong types."""
    for key, value in update.items():
        path = f"{prefix}{key}"
        if key not in base:
            raise ConfigError(f"unknown config key {path!r}")
        current = base[key]
        if isinstance(current, ConfigDict):
            if not isinstance(value, (ConfigDict, dict)):
                raise ConfigError(f"config key {path!r} is a group; got {value!r}")
            merge_into(current, value, prefix=f"{path}.")
        else:
            if isinstance(value, (ConfigDict, dict)):
                raise ConfigError(f"config key {path!r} is a value, not a group")
            with base.ignore_type():
                base[key] = value if path in _ANY_TYPE else _check_type(path, current, value)


def apply_override(config: ConfigDict, dotted: str, text: str) -> None:
    """Applies one `--config.a.b=text` override."""
    *parents, leaf = dotted.split(".")
    node = config
    for i, part in enumerate(parents):
        if part not in node or not isinstance(node[part], ConfigDict):
            raise ConfigError(f"unknown config key {'.'.join(parents[: i + 1])!r}")
        node = node[part]
    if dotted == "model.name":
        use_model_schema(config, text)
    value = _parse_value(text)
    # A string default keeps the override a string: `--config.data.dataset=123` is a name.
    if leaf in node and isinstance(node[leaf], str) and dotted not in _ANY_TYPE:
        value = text
    merge_into(node, {leaf: value}, prefix=".".join(parents) + "." if parents else "")


def apply_overrides(config: ConfigDict, overrides: Sequence[str]) -> None:
    """Applies `key=value` overrides in order (`--config.key=value` without the prefix)."""
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"override {item!r} is not of the form key=value")
        apply_override(config, key.strip(), value)


def use_model_schema(config: ConfigDict, name: Any) -> None:
    """Makes `config.model` the default schema of model `name` (models differ in keys)."""
    from contrastive_jax.models import default_model_config

    if name == config.model.get("name"):
        return
    config.model = default_model_config(name)  # an unknown name: ConfigError on 'model.name'


def load_config(spec: str, overrides: Sequence[str] = ()) -> ConfigDict:
    """Loads `spec`, validates it against the schema and applies `a.b=v` overrides."""
    config = default_config()
    loaded = load_config_file(spec)
    if isinstance(loaded.get("model"), (ConfigDict, dict)) and "name" in loaded["model"]:
        use_model_schema(config, loaded["model"]["name"])
    merge_into(config, loaded)
    apply_overrides(config, overrides)
    validate(config)
    return config


def config_to_json(config: ConfigDict) -> str:
    return json.dumps(config.to_dict(), indent=2, sort_keys=True, default=str)
