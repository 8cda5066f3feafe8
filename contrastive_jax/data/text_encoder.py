"""What turns a run's captions into model inputs: its sentencepiece tokenizer (trained on
the training captions when the config names none) or, for CLIPPO, the text renderer."""

from __future__ import annotations

import os
from collections.abc import Iterator

import ml_collections

from contrastive_jax.data.render_text import TextRenderer
from contrastive_jax.data.stream import source_captions
from contrastive_jax.data.text_conventions import TextConventions, for_model
from contrastive_jax.data.tokenizer import Tokenizer, train_tokenizer

TOKENIZER_CAPTIONS = 1_000_000  # per source; plenty for a sentencepiece model


def training_captions(data_config: ml_collections.ConfigDict) -> Iterator[str]:
    """The first TOKENIZER_CAPTIONS usable, cleaned captions of each training source."""
    return source_captions(data_config, TOKENIZER_CAPTIONS)


def text_renderer(data_config: ml_collections.ConfigDict) -> TextRenderer:
    """Renders captions as the data's images (CLIPPO), in the image value range."""
    return TextRenderer(data_config.render, image_size=data_config.image_size,
                        value_range=data_config.value_range, lowercase=data_config.lowercase)


def ensure_tokenizer(data_config: ml_collections.ConfigDict,
                     workdir: str) -> Tokenizer | TextRenderer:
    """The configured tokenizer; without a path, one trained on the training captions.

    The trained model is saved as `workdir/tokenizer.model` and reused when present, so a
    resumed run tokenises exactly as before. With `data.render.enabled` (CLIPPO) the
    captions are rendered instead, and this returns the renderer.
    """
    if data_config.render.enabled:
        return text_renderer(data_config)
    conventions = TextConventions.from_config(data_config)  # pad id, EOS rule, lowercasing
    if data_config.tokenizer.path:
        return Tokenizer(data_config.tokenizer.path, conventions)
    path = os.path.join(workdir, "tokenizer.model")
    if not os.path.exists(path):
        prefix = path[: -len(".model")]
        train_tokenizer(training_captions(data_config), prefix,
                        data_config.tokenizer.vocab_size, lowercase=data_config.lowercase)
    return Tokenizer(path, conventions)


def workdir_tokenizer(config: ml_collections.ConfigDict,
                      workdir: str) -> Tokenizer | TextRenderer:
    """What turned a run's captions into model input: its sentencepiece model under the
    run's text conventions (pad id, EOS rule, lowercasing, max_len; a workdir from before
    they were recorded gets pad 0 and sticky EOS), or the text renderer (CLIPPO: prompts
    are rendered, nothing to load)."""
    if config.data.render.enabled:
        return text_renderer(config.data)
    return Tokenizer(os.path.join(workdir, "tokenizer.model"), for_model(config))
