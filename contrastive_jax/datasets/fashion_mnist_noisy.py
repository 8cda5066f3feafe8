"""Fashion-MNIST captions with a known fraction of captions shuffled across examples.

A test corpus for curation: in the train split, examples with uid_uniform(uid, "shuffle")
< NOISY_FRACTION trade captions among themselves (a fixed permutation), so their pairs are
mostly wrong. `caption_label` is the class the caption names; a pair is wrong exactly when
it differs from `label` (a shuffled caption that lands on its own class is a right pair).
The test split is left clean. Importing the module registers the TFDS builder.
"""

from __future__ import annotations

import os

import numpy as np
import tensorflow_datasets as tfds

from contrastive_jax.datasets import fashion_mnist_captions as fmc
from contrastive_jax.datasets.uid_random import uid_uniform

NOISY_FRACTION = 0.3


def shuffled_sources(split: str, n: int, fraction: float = NOISY_FRACTION) -> np.ndarray:
    """source[i]: the example whose caption example i gets (i itself when not shuffled)."""
    source = np.arange(n)
    if split != "train":
        return source
    chosen = np.array([i for i in range(n) if uid_uniform(f"{split}/{i:06d}", "shuffle")
                       < fraction], np.int64)
    source[chosen] = chosen[np.random.default_rng(0).permutation(len(chosen))]
    return source


class FashionMnistCaptionsNoisy(fmc.FashionMnistCaptions):
    """fashion_mnist_captions whose train split has NOISY_FRACTION of captions shuffled."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "30% of train captions shuffled; caption_label records truth."}

    def _info(self) -> tfds.core.DatasetInfo:
        info = super()._info()
        features = dict(info.features)
        features["caption_label"] = tfds.features.ClassLabel(names=fmc.CLASS_NAMES)
        return self.dataset_info_from_configs(
            description="Fashion-MNIST captions, 30% of train captions shuffled.",
            features=tfds.features.FeaturesDict(features),
            supervised_keys=("image", "label"),
            disable_shuffling=True,
        )

    def _generate_examples(self, directory: str, split: str):
        images, labels = fmc.load_split(directory, split)
        source = shuffled_sources(split, len(labels))
        for i, (image, label) in enumerate(zip(images[..., None], labels, strict=True)):
            j = int(source[i])
            uid = f"{split}/{i:06d}"
            yield uid, {"image": image, "label": int(label), "uid": uid,
                        "caption": fmc.caption_for(split, j, int(labels[j])),
                        "caption_label": int(labels[j])}


def build_fashion_mnist_noisy(data_dir: str | None,
                              source: str | os.PathLike | None = None) -> tfds.core.DatasetBuilder:
    """Prepares the dataset under `data_dir` if needed (local idx files only)."""
    return fmc.build_fashion_mnist_captions(data_dir, source, name="fashion_mnist_captions_noisy")
