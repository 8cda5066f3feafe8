"""WordNet 3.0 from Debian's `wordnet-base` dictionary files, read by NLTK's reader.

Debian ships the database files (index.*, data.*, *.exc) without `lexnames`, the table of
the 45 lexicographer files that NLTK's reader opens first, and NLTK only reads corpora
from a directory that holds every file itself. So the files are copied once into a cache
directory beside a `lexnames` written from WordNet 3.0's lexnames(5WN) table.
"""

from __future__ import annotations

import functools
import os
import shutil
import warnings

from contrastive_jax.errors import DataError

DEFAULT_ROOT = "/usr/share/wordnet"
ROOT_ENV = "CONTRASTIVE_JAX_WORDNET_DIR"
_FILES = ("index.noun", "data.noun", "noun.exc", "index.verb", "data.verb", "verb.exc",
          "index.adj", "data.adj", "adj.exc", "index.adv", "data.adv", "adv.exc")
_INSTALL = ("install WordNet 3.0 with `sudo apt-get install wordnet-base` (puts it in "
            f"{DEFAULT_ROOT}) or set {ROOT_ENV} to a directory holding its dict files")
# WordNet 3.0's lexicographer files, in file-number order (lexnames(5WN)).
LEXNAMES = (
    "adj.all", "adj.pert", "adv.all", "noun.Tops", "noun.act", "noun.animal",
    "noun.artifact", "noun.attribute", "noun.body", "noun.cognition", "noun.communication",
    "noun.event", "noun.feeling", "noun.food", "noun.group", "noun.location", "noun.motive",
    "noun.object", "noun.person", "noun.phenomenon", "noun.plant", "noun.possession",
    "noun.process", "noun.quantity", "noun.relation", "noun.shape", "noun.state",
    "noun.substance", "noun.time", "verb.body", "verb.change", "verb.cognition",
    "verb.communication", "verb.competition", "verb.consumption", "verb.contact",
    "verb.creation", "verb.emotion", "verb.motion", "verb.perception", "verb.possession",
    "verb.social", "verb.stative", "verb.weather", "adj.ppl",
)
_SYNTACTIC_CATEGORY = {"noun": 1, "verb": 2, "adj": 3, "adv": 4}


def _cache_root() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    return os.path.join(base, "contrastive_jax", "wordnet-3.0")


def _prepared_root(source: str) -> str:
    """A directory NLTK's reader accepts: the dict files of `source` plus `lexnames`."""
    missing = [f for f in _FILES if not os.path.isfile(os.path.join(source, f))]
    if missing:
        raise DataError(f"WordNet not found: {source} lacks {missing[0]}; {_INSTALL}")
    root = _cache_root()
    stamp = os.path.join(root, "source")
    if os.path.isfile(stamp) and open(stamp, encoding="utf-8").read() == source:
        return root
    tmp = f"{root}.tmp{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    for name in _FILES:
        shutil.copyfile(os.path.join(source, name), os.path.join(tmp, name))
    with open(os.path.join(tmp, "lexnames"), "w", encoding="utf-8") as f:
        for number, name in enumerate(LEXNAMES):
            f.write(f"{number:02d}\t{name}\t{_SYNTACTIC_CATEGORY[name.split('.')[0]]}\n")
    with open(os.path.join(tmp, "source"), "w", encoding="utf-8") as f:
        f.write(source)
    shutil.rmtree(root, ignore_errors=True)
    os.replace(tmp, root)  # whole or absent: a concurrent reader never sees half a copy
    return root


@functools.cache
def load_wordnet(source: str | None = None):
    """NLTK's WordNetCorpusReader over WordNet 3.0 (`source`: its dict directory; default
    $CONTRASTIVE_JAX_WORDNET_DIR or /usr/share/wordnet)."""
    source = source or os.environ.get(ROOT_ENV) or DEFAULT_ROOT
    root = _prepared_root(source)
    try:
        import nltk.data
        from nltk.corpus.reader.wordnet import WordNetCorpusReader
    except ImportError as e:
        raise DataError("WordNet needs NLTK: pip install 'contrastive-jax[catlip]'") from e

    class WordNet30(WordNetCorpusReader):
        def map_wn(self, version="wordnet"):
            # NLTK maps sense keys from its own "wordnet" corpus (also 3.0) to the loaded
            # one for multilingual lookups; these files are that version: nothing to map.
            return None

    if root not in nltk.data.path:
        nltk.data.path.append(root)  # NLTK opens corpus files only under its data paths
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "multilingual functions are not available"
        return WordNet30(root, None)
