"""Fashion-MNIST with synthetic captions, as a TFDS builder that reads local idx files only.

Importing this module registers the builder, so `tfds.builder("fashion_mnist_captions",
data_dir=...)` finds it. The source is Debian's `dataset-fashion-mnist` package; nothing is
downloaded. Captions are a deterministic function of (split, example index): a training
template filled with the class name or a synonym. `ZEROSHOT_TEMPLATES` is a held-out prompt
set that never occurs among training captions, so zero-shot accuracy measures transfer
rather than caption memorisation.
"""

from __future__ import annotations

import os
import re

import numpy as np
import tensorflow_datasets as tfds

from contrastive_jax.datasets import idx
from contrastive_jax.errors import InputNotFoundError

DEFAULT_SOURCE_DIR = "/usr/share/datasets/fashion-mnist"
SOURCE_DIR_ENV = "CONTRASTIVE_JAX_FASHION_MNIST_DIR"
_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
_INSTRUCTIONS = (
    "Fashion-MNIST idx files are read locally, never downloaded. Install them with\n"
    "  sudo apt-get install dataset-fashion-mnist\n"
    f"(puts them in {DEFAULT_SOURCE_DIR}), or set {SOURCE_DIR_ENV} to a directory holding\n"
    + "".join(f"  {name}\n" for pair in _FILES.values() for name in pair)
)

# Label order is Fashion-MNIST's (0 = T-shirt/top ... 9 = Ankle boot), written as phrases.
CLASS_NAMES: list[str] = [
    "t-shirt", "trouser", "pullover", "dress", "coat",
    "sandal", "shirt", "sneaker", "bag", "ankle boot",
]  # fmt: skip

# Names a caption may use for each class (the first is the class name itself). Plurals are
# avoided (or wrapped as "pair of ...") so every template reads as English with "a {}".
SYNONYMS: dict[str, list[str]] = {
    "t-shirt": ["t-shirt", "tee shirt", "tee", "top"],
    "trouser": ["trouser", "pair of trousers", "pair of pants", "pair of slacks"],
    "pullover": ["pullover", "sweater", "jumper"],
    "dress": ["dress", "gown", "frock"],
    "coat": ["coat", "jacket", "overcoat"],
    "sandal": ["sandal", "flip-flop", "strappy sandal"],
    "shirt": ["shirt", "button-up shirt", "blouse"],
    "sneaker": ["sneaker", "trainer", "running shoe"],
    "bag": ["bag", "handbag", "purse", "tote bag"],
    "ankle boot": ["ankle boot", "boot", "bootie"],
}

TRAIN_TEMPLATES: list[str] = [
    "a photo of a {}.",
    "a picture of a {}.",
    "a {}.",
    "{}",
    "this is a {}.",
    "{} on a dark background.",
    "a black and white picture of a {}.",
    "a grayscale photo of a {}.",
    "a small image of a {}.",
    "a product photo of a {}.",
    "a close-up of a {}.",
    "a centered photo of a {}.",
    "a pixelated photo of a {}.",
    "a thumbnail of a {}.",
    "a fashion item: a {}.",
    "a catalog photo of a {}.",
    "a tiny grayscale picture of a {}.",
    "the {} in a store catalog.",
    "a photo of my {}.",
    "someone's {}, photographed from above.",
]

# Held out: never used for training captions (tests check templates and filled prompts).
ZEROSHOT_TEMPLATES: list[str] = [
    "an image of a {}.",
    "a low resolution photo of the {}.",
    "a blurry photo of a {}.",
    "a good photo of the {}.",
    "a rendering of a {}.",
    "a photo of the small {}.",
    "itap of a {}.",
    "a cropped photo of the {}.",
]


def fill_template(template: str, name: str) -> str:
    """Fills a template and fixes the article ("a ankle boot" -> "an ankle boot")."""
    text = template.format(name)
    if name[:1] in "aeiou":
        text = re.sub(rf"\ba {re.escape(name)}", f"an {name}", text)
    return text


def _mix(x: int) -> int:
    """splitmix64 finaliser: a stable integer hash (Python's hash() is salted per process)."""
    x = (x + 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    return x ^ (x >> 31)


def caption_for(split: str, index: int, label: int) -> str:
    """The caption of example `index` of `split`: a deterministic training template + name."""
    split_salt = {"train": 0, "test": 1 << 40}.get(split, 2 << 40)
    h = _mix(split_salt + index)
    template = TRAIN_TEMPLATES[h % len(TRAIN_TEMPLATES)]
    names = SYNONYMS[CLASS_NAMES[label]]
    name = names[(h >> 32) % len(names)]
    return fill_template(template, name)


def source_dir(explicit: str | os.PathLike | None = None) -> str:
    """Where the idx files are read from: `explicit`, else the env var, else Debian's path."""
    if explicit:
        return str(explicit)
    return os.environ.get(SOURCE_DIR_ENV) or DEFAULT_SOURCE_DIR


def check_source(directory: str | os.PathLike) -> None:
    """Raises FileNotFoundError, with install instructions, if any idx file is missing."""
    missing = [os.path.join(directory, f) for pair in _FILES.values() for f in pair]
    missing = [p for p in missing if not os.path.exists(p)]
    if missing:
        raise InputNotFoundError(
            f"Fashion-MNIST idx files not found in {directory} (missing "
            f"{', '.join(os.path.basename(p) for p in missing)}): install them with "
            f"'sudo apt-get install dataset-fashion-mnist' or set {SOURCE_DIR_ENV} to the "
            "directory that holds them")


def load_split(directory: str | os.PathLike, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Reads one split's images [n,28,28] and labels [n] from idx files in `directory`."""
    check_source(directory)
    image_file, label_file = (os.path.join(directory, f) for f in _FILES[split])
    images, labels = idx.read_images(image_file), idx.read_labels(label_file)
    if images.shape[0] != labels.shape[0]:
        raise idx.IdxFormatError(
            f"{directory}: {images.shape[0]} images but {labels.shape[0]} labels for {split}"
        )
    if labels.size and labels.max() >= len(CLASS_NAMES):
        raise idx.IdxFormatError(f"{label_file}: label {labels.max()} out of range 0..9")
    return images, labels


class FashionMnistCaptions(tfds.core.GeneratorBasedBuilder):
    """Fashion-MNIST images with deterministic synthetic captions (local files only)."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release: captions from 20 templates with synonyms."}
    MANUAL_DOWNLOAD_INSTRUCTIONS = _INSTRUCTIONS

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            description="Fashion-MNIST with synthetic template captions.",
            features=tfds.features.FeaturesDict(
                {
                    # Raw bytes, not PNG: encoding 70k PNGs dominates build time on a small
                    # CPU, and 28x28 images gain little from compression.
                    "image": tfds.features.Tensor(
                        shape=(28, 28, 1), dtype=np.uint8, encoding=tfds.features.Encoding.BYTES
                    ),
                    "label": tfds.features.ClassLabel(names=CLASS_NAMES),
                    "caption": tfds.features.Text(),
                    "uid": tfds.features.Text(),
                }
            ),
            supervised_keys=("image", "label"),
            # Keep idx order on disk: position i of a split is idx example i (uid matches).
            disable_shuffling=True,
            homepage="https://github.com/zalandoresearch/fashion-mnist",
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        try:
            manual = dl_manager.manual_dir  # TFDS raises when it is absent or empty
        except (AssertionError, ValueError):
            manual = None
        directory = source_dir(manual)
        return {split: self._generate_examples(directory, split) for split in _FILES}

    def _generate_examples(self, directory: str, split: str):
        images, labels = load_split(directory, split)
        for i, (image, label) in enumerate(zip(images[..., None], labels, strict=True)):
            uid = f"{split}/{i:06d}"
            label = int(label)
            caption = caption_for(split, i, label)
            yield uid, {"image": image, "label": label, "caption": caption, "uid": uid}


def build_fashion_mnist_captions(
    data_dir: str | None, source: str | os.PathLike | None = None,
    name: str = "fashion_mnist_captions",
) -> tfds.core.DatasetBuilder:
    """Prepares the dataset under `data_dir` (no-op when already built) and returns its builder.

    `source` overrides where the idx files are read from (else env var / Debian's path).
    `name` selects a registered variant built from the same files (fashion_mnist_noisy).
    """
    builder = tfds.builder(name, data_dir=data_dir)
    if not builder.is_prepared():
        directory = source_dir(source)
        check_source(directory)  # fail before TFDS creates anything, with the install hint
        builder.download_and_prepare(
            download_config=tfds.download.DownloadConfig(
                manual_dir=directory,
                # Statistics are not needed by the pipeline and cost build time.
                compute_stats=tfds.download.ComputeStatsMode.SKIP,
            )
        )
    return builder


def write_fake_source(directory: str, n_train: int = 200, n_test: int = 50, seed: int = 0) -> str:
    """Writes small valid idx.gz files (random images and labels) for tests and CPU demos."""
    rng = np.random.default_rng(seed)
    os.makedirs(directory, exist_ok=True)
    for split, n in (("train", n_train), ("test", n_test)):
        image_file, label_file = _FILES[split]
        idx.write_idx(os.path.join(directory, image_file), rng.integers(0, 256, (n, 28, 28)))
        idx.write_idx(os.path.join(directory, label_file), rng.integers(0, 10, (n,)))
    return directory
