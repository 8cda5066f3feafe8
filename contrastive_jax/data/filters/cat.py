"""DiHT's CAT filter (Radenovic et al. 2023, "Filtering, Distillation, and Hard Negatives for
Vision-Language Pre-Training"): keep a pair when its caption is complex enough, names an
action, and its image does not show the caption's words as text.

- Complexity: a scene graph of the caption from spaCy's dependency parse (objects: nouns,
  a compound's words one object; attributes: an object's adjectival and numeric modifiers,
  their conjuncts, and the complement of a copula it is the subject of; relations: a
  preposition between two objects, a verb between its subject and its object or the object
  of its preposition; a participial clause's verb has the noun it modifies as its subject,
  and a multi-word preposition, "next to" or "in front of", is one relation). The
  complexity is the most edges (attributes + relations) at any one object;
  `min_complexity` (the paper's C1: 1) is the least kept.
- Action: the caption has a verb that is not an auxiliary (spaCy's VERB), nor a participle
  modifying a noun ("a centered photo").
- Text-spotting: Tesseract reads the image; a pair is dropped when a word it reads (of at
  least `min_text_chars` letters or digits) is a word of the caption: the model would learn
  to read instead of to see.

A caption the parser cannot take (empty, not UTF-8, no words) is a parse failure: dropped
and counted under its own reason.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import io
import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from typing import Any

import ml_collections
import numpy as np

from contrastive_jax import paths
from contrastive_jax.data.nouns import caption_words, load_spacy
from contrastive_jax.errors import DataError, InputNotFoundError

REASONS = ("parse_failure", "complexity", "action", "text_spotted")  # in the order checked
_OBJECT_TAGS = ("NOUN", "PROPN")
_ATTRIBUTE_DEPS = ("amod", "nummod")
_SUBJECT_DEPS = ("nsubj", "nsubjpass")
_OBJECT_DEPS = ("dobj", "obj", "attr")
_PREP_DEPS = ("prep", "agent")  # agent: the "by" of a passive ("a man surrounded by dogs")
_ADVERBIAL_DEPS = ("advmod", "amod")  # "next" of "next to", "full" of "full of"
# Multi-word prepositions whose middle word is a noun: SceneGraphParser's list
# (sng_parser/_data/phrasal-preps.txt) and the spatial ones captions use most. Those
# headed by an adverb or adjective ("next to") need no list: see _prep_objects.
MULTIWORD_PREPOSITIONS = frozenset((
    "in front of", "in back of", "on top of", "on the top of", "on side of",
    "on the side of", "at the side of", "in the middle of", "in the center of",
    "at the edge of", "on the edge of", "at the end of", "at the bottom of",
    "at the top of", "in addition to", "in spite of", "on account of", "in regard to",
    "with regard to", "in reference to"))
_OCR_WORD = re.compile(r"[a-z0-9]+")
_REMEMBERED = 1_000_000  # pairs whose decision a filter keeps (a few hundred MB at most)
_INSTALL_OCR = ("text-spotting needs Tesseract: sudo apt-get install tesseract-ocr "
                "tesseract-ocr-eng")


@dataclasses.dataclass(frozen=True)
class CatResult:
    complexity: int | None  # None: the caption could not be parsed
    action: bool
    text_spotted: bool | None  # None: no image was read
    reason: str | None  # the first of REASONS that drops the pair; None: kept

    @property
    def keep(self) -> bool:
        return self.reason is None


def load_parser():
    """spaCy's English pipeline with its dependency parser (no NER)."""
    return load_spacy(("ner",))


def _head_object(token, fake: frozenset[int] = frozenset()):
    """The object a noun token belongs to (a compound's words belong to its head); None
    for a word that is not an object, or the noun of a multi-word preposition."""
    while token.dep_ == "compound" and token.head.pos_ in _OBJECT_TAGS and token.head is not token:
        token = token.head
    return token if token.pos_ in _OBJECT_TAGS and token.i not in fake else None


def _phrase_nouns(doc) -> frozenset[int]:
    """The nouns inside multi-word prepositions ("front" of "in front of"): the
    preposition joins the words around it, the noun names no object of the scene."""
    fake = set()
    for token in doc:
        if token.dep_ != "pobj" or token.head.dep_ != "prep":
            continue
        for of in token.children:
            words = doc[token.head.i:of.i + 1].text.lower()
            if of.dep_ == "prep" and words in MULTIWORD_PREPOSITIONS:
                fake.add(token.i)
    return frozenset(fake)


def _prep_objects(token, fake: frozenset[int]):
    """Objects reached through `token`'s prepositions: prep -> pobj ("on a sofa"), passive
    agents ("by a dog"), through a multi-word preposition's noun ("in front of a house")
    and through an adverb or adjective that heads one ("next to a car")."""
    found = []
    for p in token.children:
        if p.dep_ in _ADVERBIAL_DEPS:  # "next to", "close to", "ahead of"
            found += _prep_objects(p, fake)
            continue
        if p.dep_ not in _PREP_DEPS:
            continue
        for o in p.children:
            if o.dep_ != "pobj":
                continue
            if o.i in fake:  # "in front of a house": the house, not the front
                found += _prep_objects(o, fake)
            elif (obj := _head_object(o, fake)) is not None:
                found.append(obj)
    return found


def _subjects(token, fake: frozenset[int]):
    """The objects that act in `token`: its subjects, or for a participial clause ("a dog
    sleeping on a sofa", "two boys throwing stones") the noun the clause modifies."""
    subjects = [s for s in map(lambda c: _head_object(c, fake), token.children)
                if s is not None and s.dep_ in _SUBJECT_DEPS]
    if token.dep_ == "acl" and token.pos_ == "VERB":
        head = _head_object(token.head, fake)
        subjects += [head] if head is not None else []
    return subjects


def scene_graph_edges(doc) -> dict[int, int]:
    """Object token index -> its number of attribute and relation edges."""
    fake = _phrase_nouns(doc)
    objects = {t.i for t in doc if _head_object(t, fake) is t}
    edges = dict.fromkeys(objects, 0)
    for i in objects:
        obj = doc[i]
        attributes = [c for c in obj.children if c.dep_ in _ATTRIBUTE_DEPS]
        attributes += [c for a in attributes for c in a.conjuncts]
        edges[i] += len({a.i for a in attributes})
        for other in _prep_objects(obj, fake):  # "a dog on a sofa", "a dog next to a car"
            edges[i] += 1
            edges[other.i] += 1
    for token in doc:
        subjects = _subjects(token, fake)
        if token.pos_ == "AUX" or token.lemma_ == "be":  # "the dress is red"
            for s in subjects:
                edges[s.i] += sum(c.dep_ == "acomp" for c in token.children)
            continue
        if token.pos_ != "VERB":
            continue
        targets = [o for o in map(lambda c: _head_object(c, fake), token.children)
                   if o is not None and o.dep_ in _OBJECT_DEPS] + _prep_objects(token, fake)
        for s in subjects:
            for o in targets:  # "a man rides a bicycle", "a dog sleeping on a sofa"
                edges[s.i] += 1
                edges[o.i] += 1
    return edges


def caption_structure(doc) -> tuple[int, bool]:
    """(complexity, action) of a parsed caption."""
    edges = scene_graph_edges(doc)
    # A participle modifying a noun ("a centered photo") describes, it does not act.
    return max(edges.values(), default=0), any(t.pos_ == "VERB" and t.dep_ != "amod"
                                               for t in doc)


def ocr_words(image: np.ndarray, min_chars: int) -> set[str]:
    """Lowercase words Tesseract reads in an image (uint8 [H, W] or [H, W, C])."""
    if shutil.which("tesseract") is None:
        raise DataError(_INSTALL_OCR)
    from PIL import Image

    pil = Image.fromarray(image[..., 0] if image.ndim == 3 and image.shape[-1] == 1 else image)
    short = min(pil.size)
    if short < 100:  # Tesseract reads text of ~20 px and up: enlarge thumbnails
        scale = 100 / short
        pil = pil.resize((round(pil.width * scale), round(pil.height * scale)),
                         Image.Resampling.BICUBIC)
    png = io.BytesIO()
    pil.save(png, "PNG")
    # --psm 11: sparse text, as scene text is (no page layout assumed).
    out = subprocess.run(["tesseract", "stdin", "stdout", "--psm", "11"], input=png.getvalue(),
                         capture_output=True, check=False)
    if out.returncode:
        raise DataError(f"tesseract failed: {out.stderr.decode(errors='replace').strip()[:200]}")
    return {w for w in _OCR_WORD.findall(out.stdout.decode(errors="replace").lower())
            if len(w) >= min_chars}


class CatFilter:
    """Decides CAT for (caption, image) pairs, with the thresholds of `data.filters.cat`."""

    def __init__(self, cfg: ml_collections.ConfigDict, parser=None):
        self.cfg = cfg
        self.parser = parser if parser is not None else load_parser()
        # uid -> reason code: a pair's decision never changes, and OCR (~0.1 s) would
        # otherwise run again for every epoch that reads the pair.
        self._decided: collections.OrderedDict[bytes, np.int32] = collections.OrderedDict()

    @functools.lru_cache(maxsize=100_000)  # noqa: B019 (one filter per pipeline)
    def _structure(self, caption: str) -> tuple[int, bool] | None:
        if not caption_words(caption):
            return None
        return caption_structure(self.parser(caption))

    def reason_code(self, caption: bytes, image: np.ndarray, uid: bytes = b"") -> np.int32:
        """0: kept; k: dropped for REASONS[k - 1] (the pipeline's numpy function); decisions
        are remembered by `uid` (the last _REMEMBERED of them)."""
        if uid and uid in self._decided:
            self._decided.move_to_end(uid)
            return self._decided[uid]
        result = self(caption, image if image.size else None)
        code = np.int32(0 if result.keep else REASONS.index(result.reason) + 1)
        if uid:
            self._decided[uid] = code
            if len(self._decided) > _REMEMBERED:
                self._decided.popitem(last=False)
        return code

    def __call__(self, caption: str | bytes, image: np.ndarray | None = None, *,
                 every_check: bool = False) -> CatResult:
        """CAT's decision; `image` None: text-spotting is not checked. The pipeline stops
        at the first check that drops the pair (OCR is the costly one); `every_check` runs
        all of them (`data cat` reports each), and the reason is still the first."""
        if isinstance(caption, bytes):
            try:
                caption = caption.decode("utf-8")
            except UnicodeDecodeError:
                return CatResult(None, False, None, "parse_failure")
        structure = self._structure(caption.strip())
        failed = []
        complexity, action = structure if structure is not None else (None, False)
        if structure is None:
            failed.append("parse_failure")
        elif complexity < self.cfg.min_complexity:
            failed.append("complexity")
        if structure is not None and self.cfg.require_action and not action:
            failed.append("action")
        spotted = None
        if image is not None and self.cfg.text_spotting and (every_check or not failed):
            words = set(_OCR_WORD.findall(caption.lower()))  # split as the OCR text is
            spotted = bool(words) and bool(ocr_words(image, self.cfg.min_text_chars) & words)
            if spotted:
                failed.append("text_spotted")
        return CatResult(complexity, action, spotted, failed[0] if failed else None)


def cat_file(path: str, cfg: ml_collections.ConfigDict) -> Iterator[dict[str, Any]]:
    """`data cat`: one result per line of a JSONL file of {"caption", "image" (optional: a
    path, relative to the file's folder)}, every check reported even after one drops the
    pair, then a summary (counted by the first reason, as the pipeline counts)."""
    from PIL import Image

    decide = CatFilter(cfg)
    root = paths.dirname(paths.absolute(path))
    summary = {"lines": 0, "kept": 0, "dropped": 0, **{f"dropped/{r}": 0 for r in REASONS}}
    try:
        lines = paths.read_text(path).splitlines()
    except FileNotFoundError as e:
        raise InputNotFoundError(f"{path} not found") from e
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            caption, image_path = row["caption"], row.get("image")
        except (ValueError, KeyError, TypeError) as e:
            raise DataError(f"{path}:{number}: not a JSON object with a 'caption' ({e})") from e
        image = None
        if image_path:
            full = paths.join(root, image_path)
            try:
                image = np.asarray(Image.open(io.BytesIO(paths.read_bytes(full))).convert("RGB"))
            except (OSError, ValueError) as e:
                raise DataError(f"{path}:{number}: image {full} is not readable ({e})") from e
        result = decide(caption if isinstance(caption, str) else str(caption), image,
                        every_check=True)
        summary["lines"] += 1
        summary["kept" if result.keep else "dropped"] += 1
        if not result.keep:
            summary[f"dropped/{result.reason}"] += 1
        yield {"line": number, "complexity": result.complexity, "action": result.action,
               "text_spotted": result.text_spotted, "keep": result.keep,
               "reason": result.reason}
    yield {"summary": summary}
