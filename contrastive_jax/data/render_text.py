"""Captions rendered as images with GNU Unifont, as in-graph TensorFlow ops (CLIPPO).

`render_captions` turns a batch of strings into grey images inside the tf.data graph (no
py_function, so it runs in parallel maps): UTF-8 decode -> glyph rows (unknown code points
draw U+FFFD) -> greedy word wrapping -> glyphs placed on a canvas at Unifont's native
16 px -> scaled to `font_size` -> foreground/background intensities.

Wrapping rule (the numpy reference in tests implements the same): glyphs go left to right
on lines of the native canvas width. A word (a run of non-space characters) that does not
fit in the rest of a line starts a new line, unless it already starts one; a word wider
than a line is broken between characters. A space that does not fit ends the line and is
not drawn; spaces at the start of a line are not drawn. Lines beyond `max_lines` (or the
canvas) are cut.
"""

from __future__ import annotations

from collections.abc import Sequence

import ml_collections
import numpy as np
import tensorflow as tf

from contrastive_jax.data.schema import canvas_scale
from contrastive_jax.data.unifont import DEFAULT_FONT_PATH, GLYPH_SIZE, REPLACEMENT, load_unifont
from contrastive_jax.errors import ConfigError

SPACE = 0x20


def _word_widths(width: tf.Tensor, is_space: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """Per character: (starts a word, pixel width of its word); [B, L] each."""
    prev_space = tf.pad(is_space, [[0, 0], [1, 0]], constant_values=True)[:, :-1]
    starts = tf.logical_and(tf.logical_not(is_space), prev_space)
    b, n = tf.shape(width)[0], tf.shape(width)[1]
    word = tf.cumsum(tf.cast(starts, tf.int32), axis=1) - 1  # -1 before the first word
    segment = tf.maximum(word, 0) + n * tf.range(b)[:, None]  # unique per (row, word)
    ink = tf.where(is_space, 0, width)
    sums = tf.math.unsorted_segment_sum(tf.reshape(ink, [-1]), tf.reshape(segment, [-1]), b * n)
    return starts, tf.gather(sums, segment)


def _layout(width, is_space, valid, line_width: int):
    """Greedy wrapping over [B, L] characters -> (line, x, drawn), each [B, L]."""
    # Padding separates words like a space, or the last word's width would include it.
    starts, word_w = _word_widths(width, is_space | ~valid)

    def step(previous, elems):
        line, x = previous[:2]  # tf.scan feeds back the previous step's outputs
        w, space, start, ww, ok = elems
        # Spaces: skipped at a line start; end the line (undrawn) when they do not fit.
        skip = space & tf.equal(x, 0)
        wrap_space = space & ~skip & (x + w > line_width)
        # Words: a new line when the whole word does not fit and the line is not empty;
        # then a break between characters when the word is wider than a line.
        wrap_word = ~space & start & (x > 0) & (x + ww > line_width)
        x1 = tf.where(wrap_word, 0, x)
        wrap_char = ~space & (x1 > 0) & (x1 + w > line_width)
        x1 = tf.where(wrap_char, 0, x1)
        new_line = line + tf.cast(wrap_space | wrap_word | wrap_char, tf.int32)
        drawn = ok & ~skip & ~wrap_space
        new_x = tf.where(wrap_space, 0, tf.where(drawn, x1 + w, x))
        new_line = tf.where(ok, new_line, line)
        return new_line, new_x, x1, drawn

    elems = tuple(tf.transpose(t) for t in (width, is_space, starts, word_w, valid))
    zeros = tf.zeros_like(width[:, 0])
    line, _, x, drawn = tf.scan(step, elems, initializer=(zeros, zeros, zeros, valid[:, 0]))
    return tf.transpose(line), tf.transpose(x), tf.transpose(drawn)


def render_captions(captions: tf.Tensor, *, image_size: int, font_size: int = 16,
                    max_lines: int = 0, lowercase: bool = False, foreground: float = 0.0,
                    background: float = 255.0, channels: int = 1,
                    font_path: str = DEFAULT_FONT_PATH) -> tf.Tensor:
    """Strings [B] -> float32 images [B, S, S, channels] with values in [0, 255]."""
    table = load_unifont(font_path)
    side, down, up = canvas_scale(image_size, font_size)
    lines = side // GLYPH_SIZE if max_lines <= 0 else min(max_lines, side // GLYPH_SIZE)
    captions = tf.convert_to_tensor(captions, tf.string)
    if lowercase:
        captions = tf.strings.lower(captions, encoding="utf-8")
    codes = tf.strings.unicode_decode(captions, "UTF-8", errors="replace",
                                      replacement_char=REPLACEMENT)
    codes = codes.to_tensor(default_value=-1)  # [B, L]; -1 pads
    codes = tf.pad(codes, [[0, 0], [0, 1]], constant_values=-1)  # L >= 1 even if all empty
    valid = codes >= 0
    in_bmp = tf.clip_by_value(codes, 0, 0xFFFF)
    rows = tf.gather(tf.constant(table.index), in_bmp)
    rows = tf.where(codes > 0xFFFF, int(table.index[REPLACEMENT]), rows)
    width = tf.gather(tf.constant(table.widths.astype(np.int32)), rows)
    is_space = tf.equal(codes, SPACE)
    line, x, drawn = _layout(width, is_space, valid, side)
    drawn &= line < lines

    # Which character owns each pixel column of each line: scatter character ids into
    # [B, lines + 1, side + 16]; line `lines` and the columns past `side` are a dump for
    # undrawn characters and the empty right half of narrow glyph slots. Drawn glyphs never
    # overlap, so every kept position is written at most once.
    b, n = tf.shape(codes)[0], tf.shape(codes)[1]
    col = tf.range(GLYPH_SIZE)[None, None, :]
    keep = drawn[:, :, None] & (col < width[:, :, None])
    dump_line = tf.fill(tf.shape(col + line[:, :, None]), lines)
    at_line = tf.where(keep, tf.broadcast_to(line[:, :, None], tf.shape(keep)), dump_line)
    at_col = tf.where(keep, x[:, :, None] + col, side + col)
    batch = tf.broadcast_to(tf.range(b)[:, None, None], tf.shape(keep))
    char = tf.broadcast_to(tf.range(n)[None, :, None], tf.shape(keep))
    owner = tf.tensor_scatter_nd_update(
        tf.fill([b, lines + 1, side + GLYPH_SIZE], n),  # n: the blank glyph appended below
        tf.stack([batch, at_line, at_col], axis=-1), char)
    start = tf.tensor_scatter_nd_update(
        tf.zeros([b, lines + 1, side + GLYPH_SIZE], tf.int32),
        tf.stack([batch, at_line, at_col], axis=-1), tf.broadcast_to(x[:, :, None],
                                                                     tf.shape(keep)))
    owner, start = owner[:, :lines, :side], start[:, :lines, :side]

    # Glyph bitmaps as [B, L + 1, 16 columns, 16 rows]: one gather per canvas column.
    packed = tf.gather(tf.constant(table.bits), rows)  # [B, L, 32] uint8
    shifts = tf.constant([7, 6, 5, 4, 3, 2, 1, 0], tf.uint8)
    bits = tf.bitwise.bitwise_and(tf.bitwise.right_shift(packed[..., None], shifts), 1)
    glyphs = tf.reshape(bits, [b, n, GLYPH_SIZE, GLYPH_SIZE])  # [B, L, row, col]
    glyphs = tf.pad(tf.transpose(glyphs, [0, 1, 3, 2]), [[0, 0], [0, 1], [0, 0], [0, 0]])
    column = tf.clip_by_value(tf.range(side)[None, None, :] - start, 0, GLYPH_SIZE - 1)
    # One flat gather of glyph columns (cheaper than gather_nd with stacked indices).
    flat = ((tf.range(b)[:, None, None] * (n + 1) + owner) * GLYPH_SIZE) + column
    pixels = tf.gather(tf.reshape(glyphs, [-1, GLYPH_SIZE]), flat)  # [B, lines, side, 16]
    canvas = tf.reshape(tf.transpose(pixels, [0, 1, 3, 2]), [b, lines * GLYPH_SIZE, side])
    canvas = tf.pad(tf.cast(canvas, tf.float32), [[0, 0], [0, side - lines * GLYPH_SIZE],
                                                  [0, 0]])
    if down > 1:  # area downscale: the ink coverage of each output pixel
        canvas = tf.reduce_mean(tf.reshape(canvas, [b, image_size, down, image_size, down]),
                                axis=[2, 4])
    elif up > 1:
        canvas = tf.repeat(tf.repeat(canvas, up, axis=1), up, axis=2)
    image = float(background) + (float(foreground) - float(background)) * canvas
    image = tf.reshape(image, [b, image_size, image_size, 1])
    return tf.tile(image, [1, 1, 1, channels]) if channels > 1 else image


class TextRenderer:
    """Captions -> rendered images in the model's value range.

    Offers the two methods the pipeline and zero-shot eval call on a `Tokenizer`
    (`tf_tokenize` in graph, `encode_batch` on the host), so a CLIPPO run passes a renderer
    where a two-tower run passes its tokenizer; `max_len` is accepted and ignored.
    """

    def __init__(self, render_config: ml_collections.ConfigDict, *, image_size: int,
                 value_range: Sequence[float], lowercase: bool):
        cfg = render_config
        canvas_scale(image_size, cfg.font_size)  # fail early on a bad size
        for key in ("foreground", "background"):
            if not 0 <= cfg[key] <= 255:
                raise ConfigError(f"config key 'data.render.{key}' must be in [0, 255], got "
                                  f"{cfg[key]}")
        load_unifont(cfg.font_path)
        self.options = dict(image_size=int(image_size), font_size=int(cfg.font_size),
                            max_lines=int(cfg.max_lines), lowercase=bool(lowercase),
                            foreground=float(cfg.foreground), background=float(cfg.background),
                            channels=int(cfg.channels), font_path=cfg.font_path)
        self.value_range = tuple(float(v) for v in value_range)

    def tf_render(self, captions: tf.Tensor) -> tf.Tensor:
        """Strings [B] -> float32 [B, S, S, C] in the value range (in-graph)."""
        lo, hi = self.value_range
        return render_captions(captions, **self.options) * ((hi - lo) / 255.0) + lo

    def tf_tokenize(self, captions: tf.Tensor, max_len: int | None = None) -> tf.Tensor:
        return self.tf_render(captions)

    def encode_batch(self, texts: Sequence[str], max_len: int | None = None,
                     batch_size: int = 256) -> np.ndarray:
        """Host strings -> numpy images [N, S, S, C] (eager, in batches)."""
        out = [self.tf_render(tf.constant(list(texts[i:i + batch_size]))).numpy()
               for i in range(0, len(texts), batch_size)]
        shape = (0, *[self.options["image_size"]] * 2, self.options["channels"])
        return np.concatenate(out) if out else np.zeros(shape, np.float32)


def partner_rows(labels: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """For each row, the next row (cyclically) with the same label >= 0: (index, found)."""
    n = tf.shape(labels)[0]
    same = tf.equal(labels[:, None], labels[None, :]) & (labels[:, None] >= 0)
    same &= ~tf.cast(tf.eye(n), tf.bool)
    order = tf.math.floormod(tf.range(n)[None, :] - tf.range(n)[:, None], n)
    partner = tf.argmin(tf.where(same, order, n), axis=1, output_type=tf.int32)
    return partner, tf.reduce_any(same, axis=1)


def text_pairs(images: tf.Tensor, rendered: tf.Tensor, labels: tf.Tensor, fraction: float,
               seed: tf.Tensor) -> tf.Tensor:
    """Replaces a `fraction` of the images by another caption of the same label, rendered.

    CLIPPO trains on some text/text pairs; here the second caption comes from another
    example of the batch with the same label (rows without one keep their image). `seed`
    is an int64 [2] stateless seed, so the choice is reproducible on resume.
    """
    partner, found = partner_rows(labels)
    chosen = tf.random.stateless_uniform(tf.shape(labels), seed=seed) < fraction
    swap = tf.reshape(chosen & found, [-1, 1, 1, 1])
    return tf.where(swap, tf.gather(rendered, partner), images)
