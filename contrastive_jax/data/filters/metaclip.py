"""MetaCLIP curation (Xu et al. 2023): substring matching against entries, then balancing.

Rules followed, transcribed from facebookresearch/MetaCLIP (`metaclip/substr_matching.py`,
`metaclip/balancing.py`):
- matching: the caption is wrapped in spaces, the punctuation , . ; : ? ! ` is surrounded by
  spaces and tabs/newlines become spaces; entry e matches if " e " is a substring (so it
  matches whole words only). Matching is case-sensitive, as there (the entry list carries
  case variants); `lowercase` lowercases captions and entries first.
- counting: count[e] = number of captions in the pool that match e.
- balancing with cap t: p[e] = t / max(count[e], t). A caption is kept if, for ANY matched
  entry e, an independent uniform draw u_e < p[e] (so P(keep) = 1 - prod_e (1 - p[e])); a
  caption matching no entry is dropped. MetaCLIP draws u_e with `random.random()`; here
  u_e = uid_uniform(uid, e), so reruns keep exactly the same examples.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence

import numpy as np
import tensorflow as tf

from contrastive_jax import paths
from contrastive_jax.data.filters.counters import Predicate
from contrastive_jax.datasets.catalogue import class_names
from contrastive_jax.datasets.uid_random import uid_uniform
from contrastive_jax.errors import ConfigError, DataError, InputNotFoundError
from contrastive_jax.json_files import read_json

_PUNCTS_TO_WRAP = (",", ".", ";", ":", "?", "!", "`")
_CHARS_TO_SPACE = ("\t", "\n", "\r")


def spacing(text: str) -> str:
    """The caption as MetaCLIP matches it: padded, punctuation and whitespace spaced."""
    spaced = f" {text} "
    for punct in _PUNCTS_TO_WRAP:
        spaced = spaced.replace(punct, f" {punct} ")
    for char in _CHARS_TO_SPACE:
        spaced = spaced.replace(char, " ")
    return spaced


class EntryMatcher:
    """Finds the ids of the entries a caption contains (whole-word substring match).

    " e " starts and ends with a space, so it occurs in the spaced caption exactly where some
    span from one space to a later one equals it. Looking every such span (up to the longest
    entry) up in a dict gives MetaCLIP's matches at a cost set by the caption, not by the
    number of entries (MetaCLIP's list has 500k).
    """

    def __init__(self, entries: Sequence[str], lowercase: bool = False):
        if not entries:
            raise DataError("MetaCLIP filter: the entry list is empty")
        self.entries = list(entries)
        self.lowercase = lowercase
        self._ids: dict[str, list[int]] = {}  # " e " -> ids (a list may repeat an entry)
        for i, entry in enumerate(self.entries):
            self._ids.setdefault(f" {entry.lower() if lowercase else entry} ", []).append(i)
        self._longest = max(map(len, self._ids))

    def match(self, text: str) -> list[int]:
        """Sorted ids of the entries found in `text`."""
        spaced = spacing(text.lower() if self.lowercase else text)
        spaces = [i for i, char in enumerate(spaced) if char == " "]
        found: set[int] = set()
        for a, start in enumerate(spaces):
            for end in spaces[a + 1:]:
                if end - start >= self._longest:
                    break
                found.update(self._ids.get(spaced[start:end + 1], ()))
        return sorted(found)


def count_entries(captions: Iterable[str], matcher: EntryMatcher) -> np.ndarray:
    """count[e]: how many captions match entry e (the counting pass)."""
    counts = np.zeros(len(matcher.entries), np.int64)
    for caption in captions:
        for e in matcher.match(caption):
            counts[e] += 1
    return counts


def keep_probabilities(counts: np.ndarray, t: int) -> np.ndarray:
    """p[e] = t / max(count[e], t): entries rarer than t keep everything."""
    if t <= 0:
        raise ConfigError(f"config key 'data.filters.metaclip.t' must be positive, got {t}")
    return t / np.maximum(np.asarray(counts, np.float64), t)


def balanced_keep(uid: str | bytes, matched: Sequence[int], probs: np.ndarray) -> bool:
    """Whether an example with these matched entries survives balancing (see module doc)."""
    return any(uid_uniform(uid, e) < probs[e] for e in matched)


def save_counts(path: str, entries: Sequence[str], counts: np.ndarray) -> None:
    """Writes the counts file whole or not at all (a later run trusts any file it finds)."""
    paths.write_text(path, json.dumps({"entries": list(entries),
                                       "counts": [int(c) for c in counts]}))


def load_counts(path: str, entries: Sequence[str]) -> np.ndarray:
    """Counts from a file written by `save_counts` for the same entry list."""
    data = read_json(path, "MetaCLIP counts file")
    if data.get("entries") != list(entries):
        raise DataError(f"MetaCLIP counts file {path} was counted for another entry list; "
                         "delete it to recount")
    return np.asarray(data["counts"], np.int64)


def read_entries(path: str) -> list[str]:
    """One entry per line; blank lines are skipped."""
    if not paths.isfile(path):
        raise InputNotFoundError(f"MetaCLIP entry file not found: {path}")
    with paths.open_file(path, "r", encoding="utf-8") as f:
        entries = [line.strip() for line in f]
    return [e for e in entries if e]


def dataset_entries(dataset: str, data_dir: str | None = None) -> list[str]:
    """Entries from a dataset: every synonym for fashion_mnist_captions, else class names."""
    from contrastive_jax.datasets import fashion_mnist_captions as fmc

    if dataset == "fashion_mnist_captions":
        return [name for names in fmc.SYNONYMS.values() for name in names]
    return class_names(dataset, data_dir)


def metaclip_predicate(matcher: EntryMatcher, probs: np.ndarray) -> Predicate:
    """tf.data predicate running `balanced_keep` on (caption, uid) on the host."""

    def keep(caption: bytes, uid: bytes) -> np.bool_:
        matched = matcher.match(caption.decode("utf-8", "replace"))
        return np.bool_(balanced_keep(uid, matched, probs))

    def predicate(ex: dict[str, tf.Tensor]) -> tf.Tensor:
        ok = tf.numpy_function(keep, [ex["caption"], ex["uid"]], tf.bool, stateful=False)
        return tf.reshape(ok, [])

    return predicate


def caption_strings(ds: tf.data.Dataset) -> Iterable[str]:
    """The captions of a dataset of examples, as str."""
    for caption in ds.map(lambda ex: ex["caption"]).as_numpy_iterator():
        yield caption.decode("utf-8", "replace")
