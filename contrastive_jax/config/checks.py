"""Checks of a loaded config: relations between keys that their types alone do not catch.

Each failure is a ConfigError naming the key. The checks of one model type are its
objective's (objectives/), which this module asks and never names. Importing this module
is cheap: `validate` imports what it asks when it runs, which brings in jax (the
objectives, the loss registry, the sharding rules) and, for a config with `data.sources`,
TensorFlow (the source parser).
"""

from __future__ import annotations

import re

import ml_collections

from contrastive_jax.errors import ConfigError

ConfigDict = ml_collections.ConfigDict
# `train.init_from.tower` values (train/init_from.py): which towers a fresh run copies.
INIT_FROM_TOWERS = ("image", "text", "both", "all")


def validate(config: ConfigDict) -> None:
    """Checks relations between keys that types alone do not catch."""
    from contrastive_jax.config.eval_tasks import tasks_of
    from contrastive_jax.losses import check_loss_config
    from contrastive_jax.objectives import objective_of
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
    _validate_logical_streams(config)
    _validate_rendering(config)
    _validate_masking(config)
    _validate_text_input(config)
    objective = objective_of(config.model.name)  # a ConfigError naming 'model.name'
    objective.check_config(config, lambda: {t["kind"] for t in tasks_of(config)})
    if not objective.has_zeroshot and "zeroshot" in {t["kind"] for t in tasks_of(config)}:
        raise ConfigError(f"config key 'evals.tasks' lists a zeroshot task, but model "
                          f"'{config.model.name}' has no zero-shot classifier")
    _validate_mixup(config, objective.takes_mixup)
    _validate_naflex(config, objective.takes_patches)
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
    from contrastive_jax.config.eval_budgets import at_budgets

    for task in tasks_of(config):  # every eval task, so a bad key fails before training
        at_budgets(task, config.model)  # a budget for a fixed-size model, or out of range
    if config.optimizer.warmup_steps >= config.train.steps:
        raise ConfigError("config key 'optimizer.warmup_steps' must be below 'train.steps'")


def _validate_logical_streams(config: ConfigDict) -> None:
    """`data.logical_streams`: 0 (the default, data/order.py) or a count the global batch
    splits over."""
    streams = config.data.logical_streams
    if not isinstance(streams, int) or isinstance(streams, bool) or streams < 0:
        raise ConfigError(f"config key 'data.logical_streams' must be an integer >= 0, got "
                          f"{streams!r}")
    cit = config.train.cit
    read = config.train.batch_size * (cit.oversample if cit.enabled else 1)
    if streams and read % streams:
        raise ConfigError(f"config key 'data.logical_streams' ({streams}) must divide the "
                          f"examples read per step ('train.batch_size' times CiT's "
                          f"oversample: {read})")


def _validate_masking(config: ConfigDict) -> None:
    ratio, unmask = config.model.image.get("mask_ratio", 0.0), config.train.unmask_from
    if not isinstance(ratio, int | float) or isinstance(ratio, bool) or not 0 <= ratio < 1:
        raise ConfigError(f"config key 'model.image.mask_ratio' must be in [0, 1), got "
                          f"{ratio!r}")
    if unmask is None:
        return
    if not isinstance(unmask, int) or isinstance(unmask, bool) or unmask < 0:
        raise ConfigError(f"config key 'train.unmask_from' must be a step >= 0 or None, got "
                          f"{unmask!r}")
    if not ratio:
        raise ConfigError("config key 'train.unmask_from' needs 'model.image.mask_ratio' > 0 "
                          "(there is no masking to end)")


def _validate_text_input(config: ConfigDict) -> None:
    """`data.synsets` labels exactly the models that read synset ids (the rendering
    check, `_validate_rendering`, matches rendered captions to their readers)."""
    from contrastive_jax.objectives import models_with, objective_of

    synsets = config.data.synsets
    wanted = objective_of(config.model.name).text_input == "synsets"
    if wanted != synsets.enabled:
        readers = " or ".join(repr(n) for n in models_with(lambda o: o.text_input == "synsets"))
        raise ConfigError(f"config key 'data.synsets.enabled' must be True exactly when "
                          f"'model.name' is {readers} (it is {synsets.enabled!r} for "
                          f"{config.model.name!r})")


def _validate_mixup(config: ConfigDict, takes_mixup: bool) -> None:
    """ZeroVL's mixup: its ranges, and the steps it cannot mix."""
    mix, train = config.train.mixup, config.train
    if not mix.enabled:
        return
    for key in ("probability", "image_share"):
        if not 0.0 <= mix[key] <= 1.0:
            raise ConfigError(f"config key 'train.mixup.{key}' must be in [0, 1], got "
                              f"{mix[key]}")
    if mix.beta <= 0:
        raise ConfigError(f"config key 'train.mixup.beta' must be > 0, got {mix.beta}")
    conflicts = {
        "model.name": not takes_mixup,  # two towers: images and token texts
        "loss.positives": config.loss.positives != "pairs",  # soft targets are of pairs
        "train.microbatches": train.microbatches > 1,  # GradCache sees no mixed pairs
        "train.embedding_cache.enabled": train.embedding_cache.enabled,  # no raw images
    }
    for key, conflict in conflicts.items():
        if conflict:
            raise ConfigError(f"config key {key!r} does not combine with 'train.mixup' (a "
                              "two-tower model on image-caption pairs, no GradCache or "
                              "cached images)")


def _validate_naflex(config: ConfigDict, takes_patches: bool) -> None:
    """`data.naflex`: budgets for a NaFlex tower, each within its position table's reach;
    weights to match; the options a patch batch cannot take refused in one line."""
    cfg, image, train = config.data.naflex, config.model.image, config.train
    budgets, weights, tokens = list(cfg.budgets), list(cfg.weights), cfg.tokens_per_batch
    if not isinstance(tokens, int) or isinstance(tokens, bool) or tokens < 0:
        raise ConfigError(f"config key 'data.naflex.tokens_per_batch' must be an integer >= 0 "
                          f"(0: off), got {tokens!r}")
    if not budgets:
        for key, value in (("weights", weights), ("tokens_per_batch", tokens)):
            if value:
                raise ConfigError(f"config key 'data.naflex.{key}' needs "
                                  "'data.naflex.budgets'")
        return
    if not image.get("naflex", False):
        raise ConfigError("config key 'data.naflex.budgets' needs 'model.image.naflex=True' "
                          "(a NaFlex image tower reads patch sequences)")
    from contrastive_jax.data.schema import check_budget

    patch = image.patch_size if isinstance(image.patch_size, int) else image.patch_size[0]
    size = image.image_size if isinstance(image.image_size, int) else image.image_size[0]
    for i, budget in enumerate(budgets):
        check_budget(budget, f"data.naflex.budgets[{i}]", grid=size // patch)
    if len(set(budgets)) != len(budgets):
        raise ConfigError(f"config key 'data.naflex.budgets' repeats a budget: {budgets}")
    if weights and (len(weights) != len(budgets) or any(
            not isinstance(w, int | float) or isinstance(w, bool) or w <= 0 for w in weights)):
        raise ConfigError(f"config key 'data.naflex.weights' must be {len(budgets)} positive "
                          f"numbers, one per budget (empty: equal), got {weights}")
    conflicts = {
        "model.name": not takes_patches,  # its objective reads square images
        "train.cit.enabled": train.cit.enabled,  # CiT selects by square-image embeddings
        "train.embedding_cache.enabled": train.embedding_cache.enabled,  # cached squares
        "train.mixup.enabled": train.mixup.enabled,  # mixes pixels of equal-size images
        # One source per batch of a fixed size; token-budget batches vary in size.
        "data.debiased_sampling": bool(tokens) and config.data.debiased_sampling,
    }
    for key, conflict in conflicts.items():
        if conflict:
            raise ConfigError(f"config key {key!r} does not combine with "
                              "'data.naflex.budgets' (NaFlex patch batches)")


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
    """A model that reads rendered captions gets them; the others get tokens. The reader's
    own checks of the rendering are its objective's."""
    from contrastive_jax.objectives import models_with, objective_of

    render = config.data.render
    rendered = objective_of(config.model.name).text_input == "rendered"
    if rendered != bool(render.enabled):
        readers = ", ".join(models_with(lambda o: o.text_input == "rendered"))
        raise ConfigError(f"config key 'data.render.enabled' must be {rendered} for model "
                          f"{config.model.name!r} ({readers} reads rendered captions)")
