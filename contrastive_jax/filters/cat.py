"""DiHT's CAT filter (Radenovic et al. 2023, "Filtering, Distillation, and Hard Negatives for
Vision-Language Pre-Training"): keep a pair when its caption is complex enough, names an
action, and its image does not show the caption's words as text.

- Complexity: a scene graph of the caption from spaCy's dependency parse (objects: nouns,
  a compound's words one object; attributes: an object's adjectival and numeric modifiers,
  their conjuncts, and the complement of a copula it is the subject of; relations: a
  preposition between two objects, a verb between its subject and its object or the object
  of its preposition). The complexity is the most edges (attributes + relations) at any one
  object; `min_complexity` (the paper's C1: 1) is the least kept.
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


def _head_object(token):
    """The object a noun token belongs to (a compound's words belong to its head)."""
    while token.dep_ == "compound" and token.head.pos_ in _OBJECT_TAGS and token.head is not token:
        token = token.head
    return token if token.pos_ in _OBJECT_TAGS else None


def _prep_objects(token):
    """Objects reached through `token`'s prepositions (prep -> pobj)."""
    return [o for p in token.children if p.dep_ == "prep"
            for o in map(_head_object, p.children) if o is not None and o.dep_ == "pobj"]


def scene_graph_edges(doc) -> dict[int, int]:
    """Object token index -> its number of attribute and relation edges."""
    edges: dict[int, int] = {}
    objects = {t.i for t in doc if t.pos_ in _OBJECT_TAGS and _head_object(t) is t}
    for i in objects:
        edges[i] = 0
    for i in objects:
        obj = doc[i]
        attributes = [c for c in obj.children if c.dep_ in _ATTRIBUTE_DEPS]
        attributes += [c for a in attributes for c in a.conjuncts]
        edges[i] += len({a.i for a in attributes})
        for other in _prep_objects(obj):  # "a dog on a sofa"
            edges[i] += 1
            edges[other.i] += 1
    for token in doc:
        subjects = [s for s in map(_head_object, token.children) if s is not None
                    and s.dep_ in _SUBJECT_DEPS]
        if token.pos_ == "AUX" or token.lemma_ == "be":  # "the dress is red"
            for s in subjects:
                edges[s.i] += sum(c.dep_ == "acomp" for c in token.children)
            continue
        if token.pos_ != "VERB":
            continue
        targets = [o for o in map(_head_object, token.children) if o is not None
                   and o.dep_ in _OBJECT_DEPS] + _prep_objects(token)
        for s in subjects:
            for o in targets:  # "a man rides a bicycle", "cats sleep on a sofa"
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

    def __call__(self, caption: str | bytes, image: np.ndarray | None = None) -> CatResult:
        """CAT's decision; `image` None: text-spotting is not checked."""
        if isinstance(caption, bytes):
            try:
                caption = caption.decode("utf-8")
            except UnicodeDecodeError:
                return CatResult(None, False, None, "parse_failure")
        structure = self._structure(caption.strip())
        if structure is None:
            return CatResult(None, False, None, "parse_failure")
        complexity, action = structure
        if complexity < self.cfg.min_complexity:
            return CatResult(complexity, action, None, "complexity")
        if self.cfg.require_action and not action:
            return CatResult(complexity, action, None, "action")
        if image is None or not self.cfg.text_spotting:
            return CatResult(complexity, action, None, None)
        words = set(_OCR_WORD.findall(caption.lower()))  # split as the OCR text is
        spotted = bool(ocr_words(image, self.cfg.min_text_chars) & words)
        return CatResult(complexity, action, spotted, "text_spotted" if spotted else None)


def cat_file(path: str, cfg: ml_collections.ConfigDict) -> Iterator[dict[str, Any]]:
    """`data cat`: one result per line of a JSONL file of {"caption", "image" (optional: a
    path, relative to the file's folder)}, then a summary."""
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
        result = decide(caption if isinstance(caption, str) else str(caption), image)
        summary["lines"] += 1
        summary["kept" if result.keep else "dropped"] += 1
        if not result.keep:
            summary[f"dropped/{result.reason}"] += 1
        yield {"line": number, "complexity": result.complexity, "action": result.action,
               "text_spotted": result.text_spotted, "keep": result.keep,
               "reason": result.reason}
    yield {"summary": summary}
