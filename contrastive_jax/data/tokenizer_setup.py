"""What turns a run's captions into model inputs: its sentencepiece tokenizer (trained on
the training captions when the config names none), for CLIPPO the text renderer, or for
CatLIP the synset labeller (its vocabulary built from the training captions when the
config names none)."""

from __future__ import annotations

from collections.abc import Iterator

import ml_collections

from contrastive_jax import paths
from contrastive_jax.data.nouns import NounSynsets
from contrastive_jax.data.render_text import TextRenderer
from contrastive_jax.data.stream import source_captions
from contrastive_jax.data.synsets import (
    SynsetLabeller,
    SynsetVocabulary,
    build_vocabulary,
    check_hash,
)
from contrastive_jax.data.text_conventions import TextConventions, for_model
from contrastive_jax.data.tokenizer import Tokenizer, train_tokenizer

TOKENIZER_CAPTIONS = 1_000_000  # per source; plenty for a sentencepiece model
SYNSETS_FILE = "synsets.json"
TextEncoder = Tokenizer | TextRenderer | SynsetLabeller


def training_captions(data_config: ml_collections.ConfigDict) -> Iterator[str]:
    """The first TOKENIZER_CAPTIONS usable, cleaned captions of each training source."""
    return source_captions(data_config, TOKENIZER_CAPTIONS)


def text_renderer(data_config: ml_collections.ConfigDict) -> TextRenderer:
    """Renders captions as the data's images (CLIPPO), in the image value range."""
    return TextRenderer(data_config.render, image_size=data_config.image_size,
                        value_range=data_config.value_range, lowercase=data_config.lowercase)


def synset_vocabulary(data_config: ml_collections.ConfigDict, limit: int) -> SynsetVocabulary:
    """The vocabulary of the first `limit` captions of each training source (CatLIP)."""
    cfg = data_config.synsets
    return build_vocabulary(source_captions(data_config, limit), NounSynsets(),
                               min_count=cfg.min_count, max_size=cfg.max_size)


def ensure_synset_labeller(data_config: ml_collections.ConfigDict,
                           workdir: str) -> SynsetLabeller:
    """The run's synset labeller: `workdir/synsets.json`, copied there from
    `data.synsets.path` or built from the training captions on a fresh start, so a resumed
    run labels exactly as before; checked against `data.synsets.hash`."""
    path = paths.join(workdir, SYNSETS_FILE)
    if paths.exists(path):
        vocab, where = SynsetVocabulary.load(path), path
    else:
        given = data_config.synsets.path
        vocab = (SynsetVocabulary.load(given) if given
                 else synset_vocabulary(data_config, TOKENIZER_CAPTIONS))
        where = given or "built from the captions"
    check_hash(vocab, data_config.synsets.hash, where)  # before a wrong one is saved
    if where != path:
        vocab.save(path)
    return SynsetLabeller(vocab)


def ensure_tokenizer(data_config: ml_collections.ConfigDict, workdir: str) -> TextEncoder:
    """The configured tokenizer; without a path, one trained on the training captions.

    The trained model is saved as `workdir/tokenizer.model` and reused when present, so a
    resumed run tokenises exactly as before. With `data.render.enabled` (CLIPPO) the
    captions are rendered instead, and this returns the renderer.
    """
    if data_config.render.enabled:
        return text_renderer(data_config)
    if data_config.synsets.enabled:
        return ensure_synset_labeller(data_config, workdir)
    conventions = TextConventions.from_config(data_config)  # pad id, EOS rule, lowercasing
    if data_config.tokenizer.path:
        return Tokenizer(data_config.tokenizer.path, conventions)
    path = paths.join(workdir, "tokenizer.model")
    if not paths.exists(path):
        prefix = path[: -len(".model")]
        train_tokenizer(training_captions(data_config), prefix,
                        data_config.tokenizer.vocab_size, lowercase=data_config.lowercase)
    return Tokenizer(path, conventions)


def workdir_tokenizer(config: ml_collections.ConfigDict, workdir: str) -> TextEncoder:
    """What turned a run's captions into model input: its sentencepiece model under the
    run's text conventions (pad id, EOS rule, lowercasing, max_len; a workdir from before
    they were recorded gets pad 0 and sticky EOS), or the text renderer (CLIPPO: prompts
    are rendered, nothing to load)."""
    if config.data.render.enabled:
        return text_renderer(config.data)
    if config.data.synsets.enabled:
        return SynsetLabeller(SynsetVocabulary.load(paths.join(workdir, SYNSETS_FILE)))
    return Tokenizer(paths.join(workdir, "tokenizer.model"), for_model(config))
