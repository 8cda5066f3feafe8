"""Fashion-MNIST at variable aspect ratio: each item at native scale on a 1:3 to 3:1 canvas.

The demo data of NaFlex (configs/demo_naflex.py): the items and captions of
fashion_mnist_captions, each 28x28 item pasted unresized onto a canvas whose short side is
28 and whose long side is 28 to 84 pixels (aspect drawn log-uniformly from 1:3 to 3:1, so
tall and wide canvases are equally likely), at a drawn position, the rest filled with the
item's background (the most common value of its border pixels). Every draw is a function
of the example's uid only. Images are stored raw at their own size (no codec per example).
A model that squashes every image to a square sees items narrowed up to 3x; one that keeps
the aspect ratio sees them as they are. Importing the module registers the TFDS builder.
"""

from __future__ import annotations

import math
import os

import numpy as np
import tensorflow_datasets as tfds

from contrastive_jax.datasets import fashion_mnist_captions as fmc
from contrastive_jax.datasets.uid_random import uid_uniform

ITEM = 28  # Fashion-MNIST's side: the canvas's short side
MAX_ASPECT = 3.0  # the long side is at most 3x the short one


def canvas_of(uid: str) -> tuple[int, int, int, int]:
    """(height, width, top, left) of example `uid`'s canvas and where its item goes."""
    log_aspect = (2 * uid_uniform(uid, "aspect") - 1) * math.log(MAX_ASPECT)
    long = min(round(ITEM * math.exp(abs(log_aspect))), round(ITEM * MAX_ASPECT))
    height, width = (ITEM, long) if log_aspect >= 0 else (long, ITEM)
    offset = int(uid_uniform(uid, "position") * (long - ITEM + 1))
    top, left = (0, offset) if log_aspect >= 0 else (offset, 0)
    return height, width, top, left


def background_of(item: np.ndarray) -> int:
    """The most common value of an item's border pixels (0 for nearly every item)."""
    border = np.concatenate([item[0], item[-1], item[1:-1, 0], item[1:-1, -1]]).ravel()
    return int(np.bincount(border, minlength=256).argmax())


def place(item: np.ndarray, uid: str) -> np.ndarray:
    """uint8 [28, 28] item -> uint8 [H, W, 1] canvas of example `uid`."""
    height, width, top, left = canvas_of(uid)
    canvas = np.full((height, width), background_of(item), np.uint8)
    canvas[top:top + ITEM, left:left + ITEM] = item
    return canvas[..., None]


class FashionMnistAspect(fmc.FashionMnistCaptions):
    """fashion_mnist_captions' items and captions on 1:3 to 3:1 canvases (local files only)."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Items at native scale on canvases of aspect 1:3 to 3:1."}

    def _info(self) -> tfds.core.DatasetInfo:
        features = dict(super()._info().features)
        # Raw bytes with their shape: images differ in size, and a PNG per example would
        # dominate the build on a small CPU (as for fashion_mnist_captions).
        features["image"] = tfds.features.Tensor(
            shape=(None, None, 1), dtype=np.uint8, encoding=tfds.features.Encoding.BYTES)
        return self.dataset_info_from_configs(
            description="Fashion-MNIST items at native scale on canvases of aspect 1:3 to "
                        "3:1, with fashion_mnist_captions' captions.",
            features=tfds.features.FeaturesDict(features),
            supervised_keys=("image", "label"),
            disable_shuffling=True,  # position i of a split is idx example i
            homepage="https://github.com/zalandoresearch/fashion-mnist",
        )

    def _generate_examples(self, directory: str, split: str):
        images, labels = fmc.load_split(directory, split)
        for i, (image, label) in enumerate(zip(images, labels, strict=True)):
            uid = f"{split}/{i:06d}"
            yield uid, {"image": place(image, uid), "label": int(label), "uid": uid,
                        "caption": fmc.caption_for(split, i, int(label))}


def build_fashion_mnist_aspect(data_dir: str | None,
                               source: str | os.PathLike | None = None
                               ) -> tfds.core.DatasetBuilder:
    """Prepares the dataset under `data_dir` if needed (local idx files only)."""
    return fmc.build_fashion_mnist_captions(data_dir, source, name="fashion_mnist_aspect")
