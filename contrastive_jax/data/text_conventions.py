"""How a model's text becomes token ids: pad id, EOS rule, lowercasing, max_len.

A model records its conventions (checkpoint signature, export card) and every reader of
it (eval, embed, export) tokenises through them, via `Tokenizer(path, conventions)`.

The EOS rules are big_vision's `tokenize(max_len, eos=..., pad_value=...)`
(big_vision/pp/ops_text.py), with `tokens` = ids + [EOS] unless eos="none":
- "sticky": tokens that do not fit keep their EOS last: tokens[:max_len - 1] + [EOS];
- "yes": tokens[:max_len] (a truncated text loses its EOS);
- "none": ids[:max_len], no EOS at all;
then right-padded with `pad_id` to max_len. big_vision's SigLIP models pad with 1 (their
EOS id) and lowercase with `tf.strings.lower` without an encoding: ASCII letters only.

Only numpy here: config validation imports this, and must not load TensorFlow.
"""

from __future__ import annotations

import dataclasses
import string
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from contrastive_jax.errors import ConfigError

PAD_ID, EOS_ID, UNK_ID = 0, 1, 2  # the ids of the sentencepiece models we train
EOS_MODES = ("sticky", "yes", "none")
LOWERCASE_MODES = ("none", "unicode", "ascii")
# The `data.*` keys the conventions are read from (and that big_vision imports preset).
DATA_KEYS = ("pad_id", "eos", "lowercase", "max_len")
# Text pools that never treat id 0 as padding (models/text.py: "final" has no pad mask).
# Every other pool masks id 0, so there a pad of another id would be read as text.
UNMASKED_POOLS = ("final",)
# What every model did before conventions were recorded (checkpoints, export cards).
LEGACY = {"pad_id": 0, "eos": "sticky"}
_ASCII_LOWER = str.maketrans(string.ascii_uppercase, string.ascii_lowercase)


def lowercase_mode(value: Any, key: str = "data.lowercase") -> str:
    """`data.lowercase` (True, False, "unicode", "ascii"; cards also "none") -> its mode."""
    if isinstance(value, bool):
        return "unicode" if value else "none"
    if value in LOWERCASE_MODES:
        return value
    raise ConfigError(f"config key {key!r} must be True (= 'unicode'), False, 'unicode' or "
                      f"'ascii' (big_vision: A-Z only), got {value!r}")


@dataclasses.dataclass(frozen=True)
class TextConventions:
    """pad_id, eos ("sticky" | "yes" | "none"), lowercase ("none" | "unicode" | "ascii"),
    max_len (None: every caller passes one). The defaults are what `encode_batch` always
    did: sticky EOS, padded with 0, no lowercasing of its own."""

    pad_id: int = PAD_ID
    eos: str = "sticky"
    lowercase: str = "none"
    max_len: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.pad_id, int) or isinstance(self.pad_id, bool) or self.pad_id < 0:
            raise ConfigError(f"config key 'data.pad_id' must be a token id >= 0, got "
                              f"{self.pad_id!r}")
        if self.eos not in EOS_MODES:
            raise ConfigError(f"config key 'data.eos' must be one of {EOS_MODES}, got "
                              f"{self.eos!r}")
        if self.lowercase not in LOWERCASE_MODES:
            raise ConfigError(f"config key 'data.lowercase': unknown mode {self.lowercase!r}")
        if self.max_len is not None and self.max_len < 1:
            raise ConfigError(f"config key 'data.max_len' must be >= 1 (room for EOS), got "
                              f"{self.max_len}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TextConventions:
        """From `to_dict`'s output or an export card's `text` section; missing keys are what
        models did before they were recorded (LEGACY), other keys are ignored."""
        lowercase = lowercase_mode(d.get("lowercase", False), "text.lowercase")
        max_len = d.get("max_len")
        return cls(pad_id=int(d.get("pad_id", LEGACY["pad_id"])),
                   eos=d.get("eos", LEGACY["eos"]), lowercase=lowercase,
                   max_len=None if max_len is None else int(max_len))

    @classmethod
    def from_config(cls, config: Any) -> TextConventions:
        """From a run's config (or its `data` group): data.pad_id, eos, lowercase, max_len."""
        data = config.data if "data" in config else config
        return cls(pad_id=data.get("pad_id", LEGACY["pad_id"]),
                   eos=data.get("eos", LEGACY["eos"]),
                   lowercase=lowercase_mode(data.lowercase), max_len=data.max_len)

    def lower(self, text: str) -> str:
        """`text` lowercased as this model's training captions were."""
        if self.lowercase == "ascii":  # tf.strings.lower(encoding=""): A-Z only
            return text.translate(_ASCII_LOWER)
        return text.lower() if self.lowercase == "unicode" else text

    def pack(self, ids: Iterable[Sequence[int]], max_len: int | None = None,
             eos_id: int = EOS_ID) -> np.ndarray:
        """Token id lists (no EOS) -> int32 [N, max_len] by the EOS rule, then padded."""
        max_len = self.max_len if max_len is None else max_len
        if max_len is None or max_len < 1:
            raise ConfigError(f"config key 'data.max_len' must be >= 1 (room for EOS), got "
                              f"{max_len}")
        rows = []
        for seq in ids:
            tokens = list(seq) if self.eos == "none" else [*seq, eos_id]
            if self.eos == "sticky" and len(tokens) >= max_len:
                tokens = tokens[: max_len - 1] + tokens[-1:]  # exactly big_vision's cut
            rows.append(tokens[:max_len])
        out = np.full((len(rows), max_len), self.pad_id, dtype=np.int32)
        for row, tokens in zip(out, rows, strict=True):
            row[: len(tokens)] = tokens
        return out

    def layout(self) -> str:
        """One line for people reading an export card."""
        eos = {"sticky": "ids then EOS (kept last when truncated)",
               "yes": "ids then EOS (lost when truncated)", "none": "ids, no EOS"}[self.eos]
        return (f"{eos}, right-padded with {self.pad_id} to max_len; lowercasing: "
                f"{self.lowercase}")


def for_model(config: Any) -> TextConventions:
    """THE conventions of the model `config` describes, checked against its text tower:
    a pad id other than 0 needs a pool that does not mask id 0 as padding."""
    conventions = TextConventions.from_config(config)
    text = config.model.get("text") if "model" in config else None
    if text is None:  # one_tower (CLIPPO): captions are rendered, not tokenised
        return conventions
    if conventions.pad_id != PAD_ID and text.get("pool") not in UNMASKED_POOLS:
        raise ConfigError(
            f"config key 'data.pad_id' ({conventions.pad_id}) needs 'model.text.pool' in "
            f"{UNMASKED_POOLS}: pool {text.get('pool')!r} masks id 0 as padding, so pads of "
            f"another id would be read as text")
    vocab = text.get("vocab_size")
    if vocab is not None and conventions.pad_id >= vocab:
        raise ConfigError(f"config key 'data.pad_id' ({conventions.pad_id}) is not below "
                          f"'model.text.vocab_size' ({vocab})")
    return conventions


def check_config(config: Any) -> None:
    """Config validation of the conventions' keys; ConfigError names the key."""
    if config.data.lowercase == "none":  # a non-empty string reads as True elsewhere
        raise ConfigError("config key 'data.lowercase': write False, not 'none'")
    if config.data.render.enabled:  # rendered captions: only lowercasing applies
        lowercase_mode(config.data.lowercase)
        return
    for_model(config)


def legacy(recorded: Mapping[str, Any]) -> dict[str, Any]:
    """A signature's conventions for a checkpoint written before they were recorded: pad 0
    and sticky EOS; its lowercasing and max_len were not recorded, so `recorded`'s are
    taken (unchecked)."""
    return {**recorded, **LEGACY}


def split_overrides(overrides: Sequence[str]) -> tuple[list[str], list[str]]:
    """(`data.<DATA_KEYS>=...` overrides, the others): the first are applied after a
    model's own conventions are in place, so that they win."""
    keys = {f"data.{k}" for k in DATA_KEYS}
    text = [o for o in overrides if o.partition("=")[0].strip() in keys]
    return text, [o for o in overrides if o not in text]


def use_conventions(config: Any, conventions: TextConventions) -> None:
    """Writes `conventions` into `config.data` (so the data pipelines follow them too)."""
    data = config.data
    with data.ignore_type():  # data.lowercase holds a bool or a mode string
        data.pad_id, data.eos = conventions.pad_id, conventions.eos
        data.lowercase = {"none": False, "unicode": True}.get(conventions.lowercase,
                                                              conventions.lowercase)
        if conventions.max_len is not None:
            data.max_len = conventions.max_len
