"""GNU Unifont glyphs: parse a `unifont.hex` file into a compact, bit-packed BMP table.

Format (unifont(5)): one line per code point, `CODEPOINT:BITMAP`, both hexadecimal. The
bitmap is 16 rows; a row is 2 hex digits (8 px wide glyph, 32 digits in all) or 4 hex
digits (16 px wide, 64 digits), most significant bit = leftmost pixel. Only the Basic
Multilingual Plane (U+0000..U+FFFF) is kept; other planes and the experimental 32 px wide
glyphs are skipped.
"""

from __future__ import annotations

import functools
import os
from typing import NamedTuple

import numpy as np

from contrastive_jax.errors import DataError, InputNotFoundError

DEFAULT_FONT_PATH = "/usr/share/unifont/unifont.hex"
GLYPH_SIZE = 16  # every Unifont glyph is 16 px tall; slots are 16 px wide
REPLACEMENT = 0xFFFD  # drawn for code points the font lacks


class GlyphTable(NamedTuple):
    """bits [N, 32] uint8: row r is bytes 2r, 2r+1 (narrow glyphs: second byte 0);
    widths [N] uint8 (8 or 16); index [65536] int32: code point -> row (missing ->
    the replacement glyph's row)."""

    bits: np.ndarray
    widths: np.ndarray
    index: np.ndarray


def unpack(bits: np.ndarray) -> np.ndarray:
    """bits [..., 32] uint8 -> bitmaps [..., 16, 16] uint8 in {0, 1}."""
    return np.unpackbits(bits, axis=-1).reshape(*bits.shape[:-1], GLYPH_SIZE, GLYPH_SIZE)


def parse_hex(lines, name: str = "unifont hex") -> GlyphTable:
    """Parses unifont.hex lines (str or bytes) of file `name`; raises DataError naming a
    malformed line."""
    codes: list[int] = []
    rows: list[bytes] = []
    widths: list[int] = []
    for number, line in enumerate(lines, 1):
        if isinstance(line, bytes):
            line = line.decode("ascii", "replace")
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        code, sep, bitmap = line.partition(":")
        try:
            cp = int(code, 16)
            raw = bytes.fromhex(bitmap)
        except ValueError:
            cp, raw = -1, b""
        if not sep or cp < 0 or len(raw) not in (16, 32, 64):
            raise DataError(f"{name} line {number} is malformed: {line[:40]!r}")
        if cp > 0xFFFF or len(raw) == 64:
            continue
        if len(raw) == 16:  # 8 px rows: pad each row to two bytes
            raw = bytes(b for byte in raw for b in (byte, 0))
        codes.append(cp)
        rows.append(raw)
        widths.append(8 if len(bitmap.strip()) == 32 else 16)
    if REPLACEMENT not in codes:
        # A font without U+FFFD still needs something for unknown characters: an empty box.
        box = np.zeros((GLYPH_SIZE, GLYPH_SIZE), np.uint8)
        box[2:14, 1] = box[2:14, 6] = box[2, 1:7] = box[13, 1:7] = 1
        codes.append(REPLACEMENT)
        rows.append(np.packbits(box, axis=-1).tobytes())
        widths.append(8)
    bits = np.frombuffer(b"".join(rows), np.uint8).reshape(len(rows), 2 * GLYPH_SIZE)
    index = np.full(0x10000, codes.index(REPLACEMENT), np.int32)
    index[np.asarray(codes)] = np.arange(len(codes), dtype=np.int32)
    return GlyphTable(bits.copy(), np.asarray(widths, np.uint8), index)


@functools.lru_cache(maxsize=4)
def load_unifont(path: str = DEFAULT_FONT_PATH) -> GlyphTable:
    """The glyph table of `path`, parsed once per process (about a second for all of BMP)."""
    if not os.path.isfile(path):
        raise InputNotFoundError(f"Unifont glyphs not found at {path}: install the apt package "
                                 "'unifont' (sudo apt-get install unifont) or set "
                                 "data.render.font_path")
    with open(path, "rb") as f:
        return parse_hex(f, name=path)
