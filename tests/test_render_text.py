"""Unifont parsing and the in-graph caption renderer against a direct numpy reference."""

import numpy as np
import pytest
import tensorflow as tf

from contrastive_jax.data import unifont
from contrastive_jax.data.render_text import (
    canvas_scale,
    partner_rows,
    render_captions,
    text_pairs,
)
from contrastive_jax.errors import UserError

FONT = unifont.DEFAULT_FONT_PATH


@pytest.fixture(scope="module")
def table():
    return unifont.load_unifont(FONT)


def hex_line(code: int) -> str:
    with open(FONT) as f:
        for line in f:
            if line.startswith(f"{code:04X}:"):
                return line.strip()
    raise KeyError(code)


def bitmap_from_hex(line: str) -> np.ndarray:
    """The glyph straight from its hex text: 16 rows of 2 or 4 hex digits, MSB leftmost."""
    digits = line.split(":")[1]
    per_row = len(digits) // 16
    out = np.zeros((16, 16), np.uint8)
    for r in range(16):
        value = int(digits[r * per_row:(r + 1) * per_row], 16)
        bits = 4 * per_row
        for c in range(bits):
            out[r, c] = (value >> (bits - 1 - c)) & 1
    return out


@pytest.mark.parametrize("char", ["A", "g", "~", "é", "漢", "\ufffd"])
def test_parsed_glyphs_equal_the_hex_text(table, char):
    line = hex_line(ord(char))
    row = table.index[ord(char)]
    np.testing.assert_array_equal(unifont.unpack(table.bits[row]), bitmap_from_hex(line))
    assert table.widths[row] == (8 if len(line.split(":")[1]) == 32 else 16)


def test_parse_hex_keeps_bmp_and_rejects_bad_lines():
    t = unifont.parse_hex(["0041:" + "18" * 16, "1F600:" + "FF" * 32, "4E00:" + "00FF" * 16])
    assert t.widths[t.index[0x41]] == 8 and t.widths[t.index[0x4E00]] == 16
    assert t.index[0x42] == t.index[unifont.REPLACEMENT]  # missing -> replacement box
    assert unifont.unpack(t.bits[t.index[0x41]])[0, 3:5].tolist() == [1, 1]
    assert len(t.bits) == 3  # A, 4E00, the synthesised U+FFFD; plane 1 skipped
    with pytest.raises(ValueError, match="line 2 is malformed"):
        unifont.parse_hex(["0041:" + "18" * 16, "0042:XYZ"])


def test_missing_font_names_the_apt_package(tmp_path):
    with pytest.raises(UserError, match="apt package 'unifont'"):
        unifont.load_unifont(str(tmp_path / "none.hex"))


def reference_render(text, table, *, image_size, font_size=16, max_lines=0, lowercase=False,
                     foreground=0.0, background=255.0, channels=1):
    """Direct per-character numpy rendering with the documented wrapping rule."""
    side, down, up = canvas_scale(image_size, font_size)
    lines = side // 16 if max_lines <= 0 else min(max_lines, side // 16)
    if lowercase:
        text = text.lower()
    codes = [ord(ch) for ch in text]
    rows = [table.index[c] if c <= 0xFFFF else table.index[0xFFFD] for c in codes]
    widths = [int(table.widths[r]) for r in rows]
    canvas = np.zeros((side, side))
    line = x = 0
    for i, (c, r, w) in enumerate(zip(codes, rows, widths, strict=True)):
        if c == 0x20:
            if x == 0:
                continue
            if x + w > side:
                line, x = line + 1, 0
                continue
        else:
            if i == 0 or codes[i - 1] == 0x20:  # a word starts: does all of it fit?
                j = i
                while j < len(codes) and codes[j] != 0x20:
                    j += 1
                if x > 0 and x + sum(widths[i:j]) > side:
                    line, x = line + 1, 0
            if x > 0 and x + w > side:
                line, x = line + 1, 0
        if line < lines:
            glyph = unifont.unpack(table.bits[r])[:, :w]
            right = min(side, x + w)
            canvas[line * 16:line * 16 + 16, x:right] = glyph[:, :right - x]
        x += w
    if down > 1:
        canvas = canvas.reshape(image_size, down, image_size, down).mean(axis=(1, 3))
    canvas = np.kron(canvas, np.ones((up, up)))
    image = background + (foreground - background) * canvas
    return np.repeat(image[:, :, None], channels, axis=-1)


CASES = [
    # (captions, options): wrapping, long words, lowercase, unknown / wide characters,
    # scaling up and down, brightness, channels, line limits.
    (["a photo of a strappy sandal.", "itap of an ankle boot.", ""], dict(image_size=64)),
    (["abcdefghijklmnopqrstuvwxyz and more", "  two  spaces  "], dict(image_size=64)),
    (["A Photo OF The Bag", "x"], dict(image_size=48, lowercase=True)),
    (["emoji \U0001F600 unassigned \u0378 wide 漢字漢字漢字 é"], dict(image_size=64)),
    (["someone's pair of trousers, photographed from above."],
     dict(image_size=48, font_size=8, foreground=40, background=220)),
    (["a tiny grayscale picture", "of a bootie"], dict(image_size=32, font_size=4, channels=3)),
    (["big text wraps", "ok"], dict(image_size=64, font_size=32, foreground=255, background=0)),
    (["one two three four five six seven eight nine ten"], dict(image_size=64, max_lines=2)),
]


@pytest.mark.parametrize("captions,options", CASES)
def test_render_equals_numpy_reference(table, captions, options):
    got = render_captions(tf.constant(captions), **options).numpy()
    size = options["image_size"]
    assert got.shape == (len(captions), size, size, options.get("channels", 1))
    for image, text in zip(got, captions, strict=True):
        np.testing.assert_allclose(image, reference_render(text, table, **options), atol=1e-4)


def test_renders_in_tf_data_and_graph_mode(table):
    captions = ["a photo of a coat.", "a tee", "the sneaker in a store catalog.", "bag"]
    options = dict(image_size=48, font_size=8)
    eager = render_captions(tf.constant(captions), **options).numpy()
    ds = tf.data.Dataset.from_tensor_slices(captions).batch(3).map(
        lambda c: render_captions(c, **options), num_parallel_calls=2)
    np.testing.assert_allclose(np.concatenate(list(ds.as_numpy_iterator())), eager)
    graph = tf.function(lambda c: render_captions(c, **options),
                        input_signature=[tf.TensorSpec([None], tf.string)])
    np.testing.assert_allclose(graph(tf.constant(captions)).numpy(), eager)
    assert eager[0].min() < 128 and eager[0].max() == 255  # dark ink on white


def test_bad_font_size_is_one_line():
    with pytest.raises(ValueError, match="font_size 12"):
        canvas_scale(48, 12)
    with pytest.raises(ValueError, match="font_size 48"):
        canvas_scale(50, 48)  # 3x glyphs need a side divisible by 3
    assert canvas_scale(48, 8) == (96, 2, 1) and canvas_scale(64, 32) == (32, 1, 2)


def test_text_pairs_use_another_caption_of_the_same_label():
    labels = tf.constant([0, 1, 0, 2, 1, -1, -1])
    partner, found = partner_rows(labels)
    assert found.numpy().tolist() == [True, True, True, False, True, False, False]
    assert partner.numpy()[[0, 1, 2, 4]].tolist() == [2, 4, 0, 1]
    images = tf.zeros([7, 4, 4, 1])
    rendered = tf.reshape(tf.range(7, dtype=tf.float32) + 1, [7, 1, 1, 1]) * tf.ones([7, 4, 4, 1])
    seed = tf.constant([1, 2], tf.int64)
    out = text_pairs(images, rendered, labels, 1.0, seed).numpy()[:, 0, 0, 0]
    assert out.tolist() == [3, 5, 1, 0, 2, 0, 0]  # rows without a partner keep their image
    assert not text_pairs(images, rendered, labels, 0.0, seed).numpy().any()
    half = text_pairs(images, rendered, labels, 0.5, seed).numpy()
    np.testing.assert_array_equal(half, text_pairs(images, rendered, labels, 0.5, seed).numpy())
