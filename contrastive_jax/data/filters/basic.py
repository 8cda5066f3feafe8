"""Basic filters: caption words and characters, image size and aspect ratio, language id.

Language identification uses py3langid, whose model ships inside the package (nothing is
downloaded at run time); it runs on the host through tf.numpy_function.
"""

from __future__ import annotations

from collections.abc import Sequence

import ml_collections
import numpy as np
import tensorflow as tf

from contrastive_jax.data.filters.counters import Predicate
from contrastive_jax.data.schema import check_basic_bounds


def caption_words(caption: tf.Tensor) -> tf.Tensor:
    """Number of whitespace-separated words."""
    return tf.size(tf.strings.split(tf.strings.strip(caption)))


def caption_chars(caption: tf.Tensor) -> tf.Tensor:
    """Unicode characters after stripping surrounding whitespace."""
    return tf.strings.length(tf.strings.strip(caption), unit="UTF8_CHAR")


def _in_range(value: tf.Tensor, lo: float, hi: float) -> tf.Tensor:
    """lo <= value <= hi, where a bound of 0 means no bound."""
    ok = tf.constant(True)
    value = tf.cast(value, tf.float32)
    if lo:
        ok = tf.logical_and(ok, value >= lo)
    if hi:
        ok = tf.logical_and(ok, value <= hi)
    return ok


def detect_language(text: str) -> str:
    """ISO 639-1 code of the most likely language (py3langid's 97-language model)."""
    import py3langid

    return py3langid.classify(text)[0]


def language_in(caption: tf.Tensor, languages: Sequence[str]) -> tf.Tensor:
    """True if the caption's detected language is one of `languages`."""
    allowed = frozenset(languages)

    def check(text: bytes) -> np.bool_:
        return np.bool_(detect_language(text.decode("utf-8", "replace")) in allowed)

    ok = tf.numpy_function(check, [caption], tf.bool, stateful=False)
    return tf.reshape(ok, [])


def basic_predicate(cfg: ml_collections.ConfigDict) -> Predicate:
    """Keeps an example whose caption and image pass every bound set in `cfg` (0: unset)."""
    check_basic_bounds(cfg)
    languages = tuple(cfg.languages)

    def predicate(ex: dict[str, tf.Tensor]) -> tf.Tensor:
        caption = ex["caption"]
        ok = _in_range(caption_words(caption), cfg.min_words, cfg.max_words)
        ok = tf.logical_and(ok, _in_range(caption_chars(caption), cfg.min_chars, cfg.max_chars))
        if cfg.min_image_side or cfg.max_aspect_ratio:
            hw = tf.cast(tf.shape(ex["image"])[:2], tf.float32)
            short, long = tf.reduce_min(hw), tf.reduce_max(hw)
            ok = tf.logical_and(ok, _in_range(short, cfg.min_image_side, 0))
            ratio = long / tf.maximum(short, 1.0)
            ok = tf.logical_and(ok, _in_range(ratio, 0, cfg.max_aspect_ratio))
        if languages:
            # Only captions that passed the cheap checks pay for language detection.
            ok = tf.cond(ok, lambda: language_in(caption, languages), lambda: ok)
        return ok

    return predicate
