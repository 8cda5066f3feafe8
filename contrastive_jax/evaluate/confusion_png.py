"""Confusion matrix as a PNG heatmap with class-name labels (Pillow only, no matplotlib)."""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from contrastive_jax import paths

_CELL = 36  # pixels per matrix cell: room for a 4-digit count in the default font
_MARGIN = 8


def _colour(fraction: float) -> tuple[int, int, int]:
    """White (0) to dark blue (1): the share of the true class's examples in the cell."""
    f = float(np.clip(fraction, 0.0, 1.0))
    return (int(255 - 225 * f), int(255 - 185 * f), int(255 - 95 * f))


def render_confusion(confusion: np.ndarray, class_names: Sequence[str],
                     title: str = "") -> Image.Image:
    """Rows: true class, columns: predicted class; cells coloured by the row-normalised
    rate and labelled with the count."""
    confusion = np.asarray(confusion)
    n = len(class_names)
    if confusion.shape != (n, n):
        raise ValueError(f"confusion matrix {confusion.shape} does not match {n} class names")
    font = ImageFont.load_default()
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    label_w = max(int(probe.textlength(str(c), font=font)) for c in class_names) + _MARGIN
    title_h = 20 if title else 0
    left, top = label_w + 16, title_h + label_w + 16
    size = (left + n * _CELL + _MARGIN, top + n * _CELL + _MARGIN)
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    if title:
        draw.text((_MARGIN, 4), title, fill="black", font=font)
    draw.text((_MARGIN, top - 14), "true \\ predicted", fill="gray", font=font)
    rows = np.maximum(confusion.sum(axis=1, keepdims=True), 1)
    rates = confusion / rows
    for i, name in enumerate(class_names):
        y = top + i * _CELL + _CELL // 2
        draw.text((left - 6, y), str(name), fill="black", font=font, anchor="rm")
        # Column labels are drawn on their own strip and rotated to read bottom-up.
        strip = Image.new("RGB", (label_w, 14), "white")
        ImageDraw.Draw(strip).text((label_w - 2, 7), str(name), fill="black", font=font,
                                   anchor="rm")
        image.paste(strip.rotate(90, expand=True), (left + i * _CELL + _CELL // 2 - 7,
                                                    title_h + 8))
        for j in range(n):
            x0, y0 = left + j * _CELL, top + i * _CELL
            fill = _colour(rates[i, j])
            draw.rectangle((x0, y0, x0 + _CELL - 1, y0 + _CELL - 1), fill=fill,
                           outline=(220, 220, 220))
            text = "white" if rates[i, j] > 0.5 else "black"
            draw.text((x0 + _CELL // 2, y0 + _CELL // 2), str(int(confusion[i, j])), fill=text,
                      font=font, anchor="mm")
    return image


def save_confusion_png(path: str, confusion: np.ndarray, class_names: Sequence[str],
                       title: str = "") -> str:
    png = io.BytesIO()
    render_confusion(confusion, class_names, title).save(png, format="PNG")
    paths.write_bytes(path, png.getvalue())
    return path
