"""CLIPPO's objective (models/one_tower.py): the contrastive one, with captions rendered as
images that the one tower reads."""

from __future__ import annotations

from collections.abc import Callable

from contrastive_jax.data.schema import canvas_scale
from contrastive_jax.errors import ConfigError
from contrastive_jax.objectives.base import ConfigDict
from contrastive_jax.objectives.contrastive import Contrastive


class RenderedText(Contrastive):
    """One tower for images and rendered captions."""

    text_input = "rendered"
    token_group = None  # no vocabulary
    takes_mixup = False  # the text tower's mix is of token embeddings
    takes_patches = False  # one tower for images and renderings of one square size
    export_refusal = "it reads rendered captions"

    def check_config(self, config: ConfigDict, eval_kinds: Callable[[], set[str]]) -> None:
        render, image = config.data.render, config.model.image
        for key, on in (("train.cit.enabled", config.train.cit.enabled),  # CiT embeds tokens
                        ("train.embedding_cache.enabled",
                         config.train.embedding_cache.enabled)):
            if on:
                raise ConfigError(f"config key '{key}' is not supported with model "
                                  f"{config.model.name!r}")
        if image.image_size != config.data.image_size:
            raise ConfigError(f"config key 'model.image.image_size' ({image.image_size}) must "
                              f"equal 'data.image_size' ({config.data.image_size}): one tower "
                              "sees both")
        if render.channels != image.channels:
            raise ConfigError(f"config key 'data.render.channels' ({render.channels}) must "
                              f"equal 'model.image.channels' ({image.channels})")
        if not 0.0 <= render.text_pair_fraction <= 1.0:
            raise ConfigError("config key 'data.render.text_pair_fraction' must be in [0, 1]")
        canvas_scale(config.data.image_size, render.font_size)  # ConfigError on a bad size
