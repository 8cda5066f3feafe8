"""CatLIP's synset vocabulary and the labeller that turns captions into its ids.

`build_vocabulary` tags a corpus's captions once (data/nouns.py) and keeps the synsets
named by at least `min_count` captions (the paper keeps those seen >= 500 times), most
frequent first; the vocabulary also records every word form the tagger took as a noun for
a kept synset. The labeller reads captions in training with those forms alone (the same
longest-match as the tagger's pass, by table): no tagger in the input pipeline, and, as in
CatLIP's own code, no tagging at training time. A caption's labels are the 1-based ids of
its synsets, padded with 0 to `max_len`, so they travel through the stream as tokens do.
The vocabulary's hash covers its ordered synsets, which is what the head's rows mean.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np

from contrastive_jax import paths
from contrastive_jax.data.nouns import caption_words, longest_matches
from contrastive_jax.errors import ConfigError, DataError

FORMAT = "contrastive_jax.synsets/1"


@dataclasses.dataclass(frozen=True)
class SynsetVocabulary:
    """Synsets (WordNet names, most frequent first), their caption counts, and the word
    forms that name them."""

    synsets: tuple[str, ...]
    counts: tuple[int, ...]
    forms: dict[str, str]  # space-joined words -> synset name (kept synsets only)
    summary: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def hash(self) -> str:
        return hashlib.sha256("\n".join(self.synsets).encode()).hexdigest()[:16]

    def save(self, path: str) -> None:
        """Writes the vocabulary as JSON (atomically)."""
        data = {"format": FORMAT, "hash": self.hash, "summary": self.summary,
                "synsets": [{"name": n, "count": c} for n, c in zip(self.synsets, self.counts,
                                                                   strict=True)],
                "forms": dict(sorted(self.forms.items()))}
        paths.write_text(path, json.dumps(data, indent=1))

    @classmethod
    def load(cls, path: str) -> SynsetVocabulary:
        try:
            data = json.loads(paths.read_text(path))
            if data.get("format") != FORMAT:
                raise ValueError(f"format {data.get('format')!r}, expected {FORMAT!r}")
            vocab = cls(tuple(s["name"] for s in data["synsets"]),
                        tuple(int(s["count"]) for s in data["synsets"]), dict(data["forms"]),
                        data.get("summary", {}))
        except FileNotFoundError as e:
            raise DataError(f"synset vocabulary {path} not found (build one with "
                            "`contrastive-jax data synsets`)") from e
        except (ValueError, KeyError, TypeError) as e:
            raise DataError(f"synset vocabulary {path} is not readable: {e}") from e
        if vocab.hash != data.get("hash"):
            raise DataError(f"synset vocabulary {path} does not match its own hash "
                            f"({data.get('hash')} recorded, {vocab.hash} computed)")
        return vocab


def build_vocabulary(captions: Iterable[str | bytes], extractor, *, min_count: int,
                     max_size: int = 0) -> SynsetVocabulary:
    """Counts, per synset, the captions that name it; keeps those named >= `min_count`
    times (at most `max_size` of them, the most frequent; 0: no cap)."""
    unique: collections.Counter[str] = collections.Counter()
    undecodable = 0
    for caption in captions:
        if isinstance(caption, bytes):
            try:
                caption = caption.decode("utf-8")
            except UnicodeDecodeError:
                undecodable += 1
                continue
        unique[caption] += 1
    counts: collections.Counter[str] = collections.Counter()
    forms: dict[str, str] = {}
    without = 0
    for times, matches in zip(unique.values(), extractor.extract(unique),
                                         strict=True):
        without += times * (not matches)
        for name in {name for _, name in matches}:
            counts[name] += times
        forms.update(matches)
    ranked = sorted((c for c in counts.items() if c[1] >= min_count), key=lambda c: (-c[1], c[0]))
    ranked = ranked[:max_size] if max_size else ranked
    kept = {name for name, _ in ranked}
    summary = {"captions": sum(unique.values()), "unique_captions": len(unique),
               "undecodable": undecodable, "without_nouns": without,
               "synsets_seen": len(counts), "min_count": min_count, "max_size": max_size}
    return SynsetVocabulary(tuple(n for n, _ in ranked), tuple(c for _, c in ranked),
                            {form: name for form, name in forms.items() if name in kept},
                            summary)


class SynsetLabeller:
    """Captions -> int32 [N, max_len] of 1-based synset ids (0: none), by the vocabulary's
    forms; the "text" a CatLIP model trains on."""

    def __init__(self, vocabulary: SynsetVocabulary):
        self.vocabulary = vocabulary
        self.vocab_size = len(vocabulary.synsets)
        self._index = {name: i for i, name in enumerate(vocabulary.synsets)}
        self._ids = {form: self._index[name] + 1 for form, name in vocabulary.forms.items()}

    def labels(self, caption: str) -> list[int]:
        """0-based synset ids the caption names, first mention first, each once."""
        words = [m.group() for m in caption_words(caption)]
        ids = longest_matches(words, lambda run: self._ids.get(" ".join(run)))
        return [i - 1 for i in dict.fromkeys(i for _, i in ids)]

    def encode_batch(self, texts: Sequence[str | bytes], max_len: int) -> np.ndarray:
        out = np.zeros((len(texts), max_len), np.int32)
        for row, text in enumerate(texts):
            if isinstance(text, bytes):
                text = text.decode("utf-8", errors="replace")
            ids = self.labels(text)[:max_len]
            out[row, : len(ids)] = np.asarray(ids, np.int32) + 1
        return out

    def tf_tokenize(self, captions, max_len: int):
        """The stream's finish step: a string tensor [b] -> int32 [b, max_len]."""
        import tensorflow as tf

        def encode(strings: np.ndarray) -> np.ndarray:
            return self.encode_batch(list(strings), max_len)

        ids = tf.numpy_function(encode, [captions], tf.int32, stateful=False)
        return tf.ensure_shape(ids, [None, max_len])

    def class_rows(self, class_names: Sequence[str],
                   wordnet_lookup: Callable[[Sequence[str]], str | None] | None = None
                   ) -> np.ndarray:
        """[C, V] zero-shot weights: each class name's synsets, equally weighted (CatLIP
        reads the head's rows of a label's synsets). A name the vocabulary's forms do not
        cover is looked up in WordNet (`wordnet_lookup`: words -> synset name); a class
        without a synset in the vocabulary gets a zero row, which the scorer never
        predicts."""
        rows = np.zeros((len(class_names), self.vocab_size), np.float32)
        for c, name in enumerate(class_names):
            ids = self.labels(name)
            if not ids and wordnet_lookup is not None:
                words = [m.group() for m in caption_words(name)]
                found = longest_matches(words, wordnet_lookup)
                ids = [self._index[s] for _, s in found if s in self._index]
            if ids:
                rows[c, ids] = 1.0 / len(set(ids))
        return rows


def check_hash(vocabulary: SynsetVocabulary, expected: str, where: str) -> None:
    """A configured `data.synsets.hash` must be the vocabulary's."""
    if expected and expected != vocabulary.hash:
        raise ConfigError(f"config key 'data.synsets.hash' is {expected!r} but the synset "
                          f"vocabulary {where} has hash {vocabulary.hash!r} (built from "
                          "another corpus or with other settings)")
