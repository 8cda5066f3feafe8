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
import re
from collections.abc import Sequence
from typing import Any

import ml_collections

from contrastive_jax.errors import ConfigError  # callers import it from here too

ConfigDict = ml_collections.ConfigDict
# `train.init_from.tower` values (train/init_from.py): which towers a fresh run copies.
INIT_FROM_TOWERS = ("image", "text", "both", "all")
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
            compilation_cache_dir=None,  # persistent XLA compilation cache (a directory)
            cit=default_cit_config(),  # curation in training (contrastive_jax/filters/cit.py)
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
    c.evals = ConfigDict(
        dict(
            # The evaluation suite: [{kind, name, data: {kind, ...}, every, ...}], see
            # evaluate/task_schema.py. The groups below are its legacy single-task form.
            tasks=[],
            zeroshot=ConfigDict(
                dict(
                    enabled=True,
                    name="fashion_mnist",  # metric keys: zeroshot/<name>/top1
                    dataset="fashion_mnist_captions",
                    split="test",
                    prompts="fashion_mnist_heldout",
                    batch_size=500,
                )
            ),
            # Alignment and uniformity (Wang & Isola) on paired held-out examples.
            embedding_stats=ConfigDict(dict(enabled=True, num_examples=1000)),
            # Image-text retrieval recall@1/5/10. dataset "": held-out pairs of the zero-shot
            # split (one caption per image). A TFDS name: its `split`, with every caption of
            # `captions_key` (a sequence of texts, e.g. "captions/text") per image (COCO).
            retrieval=ConfigDict(dict(enabled=False, name="fashion_mnist", num_examples=1000,
                                      dataset="", split="test", captions_key="captions/text",
                                      chunk=1024)),
            # Few-shot linear probe (big_vision's fewshot_lsr): ridge regression on frozen
            # image embeddings, `shots` per class drawn from train_split, mean over `seeds`.
            fewshot=ConfigDict(dict(enabled=False, name="fashion_mnist",
                                    dataset="fashion_mnist_captions", train_split="train",
                                    test_split="test", shots=[1, 5, 10, 25], l2_reg=2.0**10,
                                    seeds=3, batch_size=500)),
        )
    )
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


def validate(config: ConfigDict) -> None:
    """Checks relations between keys that types alone do not catch."""
    from contrastive_jax.losses import check_loss_config
    from contrastive_jax.parallel import sharding

    if config.loss.positives not in ("pairs", "labels"):
        raise ConfigError("config key 'loss.positives' must be 'pairs' or 'labels'")
    check_loss_config(config.loss)  # the name and its options
    for key in ("batch_size", "steps", "nonfinite_limit"):
        if config.train[key] <= 0:
            raise ConfigError(f"config key 'train.{key}' must be positive")
    if config.train.nonfinite not in ("skip", "stop"):
        raise ConfigError("config key 'train.nonfinite' must be 'skip' or 'stop'")
    resume = config.train.resume_step
    if resume is not None and (not isinstance(resume, int) or isinstance(resume, bool)
                               or resume <= 0):
        raise ConfigError("config key 'train.resume_step' must be a positive step or None")
    k = config.train.microbatches
    if k < 1 or config.train.batch_size % k:
        raise ConfigError(f"config key 'train.microbatches' ({k}) must be >= 1 and divide "
                          f"'train.batch_size' ({config.train.batch_size})")
    _validate_rendering(config)
    if config.data.image_size != config.model.image.image_size:
        raise ConfigError(f"config key 'data.image_size' ({config.data.image_size}) must equal "
                          f"'model.image.image_size' ({config.model.image.image_size})")
    text_len = config.model.text.max_len if "text" in config.model else None
    if text_len is not None and config.data.max_len > text_len:
        raise ConfigError(f"config key 'data.max_len' ({config.data.max_len}) exceeds "
                          f"'model.text.max_len' ({text_len})")
    if config.distributed.enabled not in ("auto", "on", "off"):
        raise ConfigError("config key 'distributed.enabled' must be 'auto', 'on' or 'off'")
    try:
        sharding.parse_rules(config.mesh.rules)
    except (ValueError, TypeError, re.error) as e:
        raise ConfigError(f"config key 'mesh.rules': {e}") from e
    if config.data.sources:
        from contrastive_jax.data.sources import parse_sources

        parse_sources(config.data.sources)  # ConfigErrors naming the source's key
        if config.data.channels != config.model.image.channels:
            raise ConfigError(f"config key 'data.channels' ({config.data.channels}) differs "
                              f"from 'model.image.channels' ({config.model.image.channels})")
    from contrastive_jax.data.schema import check_cit_config, check_filters_config

    check_cit_config(config.train.cit)  # these raise ConfigError naming the key
    check_filters_config(config.data.filters)
    from contrastive_jax.data.text_conventions import check_config

    check_config(config)  # data.pad_id / eos / lowercase, and the pad id against the pool
    _validate_lit(config)
    from contrastive_jax.evaluate.task_schema import tasks_of

    tasks_of(config)  # every eval task, so a bad key fails before training starts
    if config.optimizer.warmup_steps >= config.train.steps:
        raise ConfigError("config key 'optimizer.warmup_steps' must be below 'train.steps'")


def _validate_lit(config: ConfigDict) -> None:
    train = config.train
    for key, patterns in (("locked.patterns", train.locked.patterns),
                          ("init_from.reinit", train.init_from.reinit)):
        for p in patterns:
            try:
                re.compile(p)
            except (re.error, TypeError) as e:
                raise ConfigError(f"config key 'train.{key}': bad regex {p!r}: {e}") from e
    if train.init_from.tower not in INIT_FROM_TOWERS:
        raise ConfigError(f"config key 'train.init_from.tower' must be one of "
                          f"{INIT_FROM_TOWERS}")
    if train.embedding_cache.enabled:
        if config.data.flip:
            raise ConfigError("config key 'train.embedding_cache.enabled' needs "
                              "'data.flip=False': a cached embedding is of the unflipped image")
        basic = config.data.filters.basic
        conflicts = {
            "train.microbatches > 1": train.microbatches > 1,
            # A cached embedding is of one fixed view of the image.
            "data.augment image augmentations": any(
                bool(config.data.augment[k]) for k in ("inception_crop", "color_jitter",
                                                       "grayscale")),
            "train.cit.enabled": train.cit.enabled,  # untested with cached images
            "data.filters.basic image bounds": basic.enabled and bool(
                basic.min_image_side or basic.max_aspect_ratio),  # images are not decoded
        }
        for key, conflict in conflicts.items():
            if conflict:
                raise ConfigError(f"config key 'train.embedding_cache.enabled' does not "
                                  f"combine with '{key}'")


def _validate_rendering(config: ConfigDict) -> None:
    """A one-tower model reads rendered captions of its own input shape; two towers tokens."""
    render, image = config.data.render, config.model.image
    one_tower = config.model.name == "one_tower"
    if one_tower != bool(render.enabled):
        raise ConfigError(f"config key 'data.render.enabled' must be {one_tower} for model "
                          f"{config.model.name!r} (one_tower reads rendered captions)")
    if not one_tower:
        return
    for key, on in (("train.cit.enabled", config.train.cit.enabled),  # CiT embeds tokens
                    ("train.embedding_cache.enabled", config.train.embedding_cache.enabled)):
        if on:
            raise ConfigError(f"config key '{key}' is not supported with model 'one_tower'")
    if image.image_size != config.data.image_size:
        raise ConfigError(f"config key 'model.image.image_size' ({image.image_size}) must equal "
                          f"'data.image_size' ({config.data.image_size}): one tower sees both")
    if render.channels != image.channels:
        raise ConfigError(f"config key 'data.render.channels' ({render.channels}) must equal "
                          f"'model.image.channels' ({image.channels})")
    if not 0.0 <= render.text_pair_fraction <= 1.0:
        raise ConfigError("config key 'data.render.text_pair_fraction' must be in [0, 1]")
    from contrastive_jax.data.schema import canvas_scale

    canvas_scale(config.data.image_size, render.font_size)  # ConfigError on a bad font_size


def config_to_json(config: ConfigDict) -> str:
    return json.dumps(config.to_dict(), indent=2, sort_keys=True, default=str)
