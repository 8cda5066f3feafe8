"""The TFDS catalogue: builders by name (the project's own prepare themselves offline),
class names, and reading a split in stored order."""

from __future__ import annotations

import tensorflow as tf
import tensorflow_datasets as tfds

from contrastive_jax.datasets import (
    fashion_mnist_aspect,
    fashion_mnist_captions,
    fashion_mnist_noisy,
)
from contrastive_jax.errors import DataError

# Builders this project ships and can prepare offline on first use; any other name is
# looked up in TFDS's own catalogue.
LOCAL_BUILDERS = {
    "fashion_mnist_captions": fashion_mnist_captions.build_fashion_mnist_captions,
    "fashion_mnist_captions_noisy": fashion_mnist_noisy.build_fashion_mnist_noisy,
    "fashion_mnist_aspect": fashion_mnist_aspect.build_fashion_mnist_aspect,
}


def get_builder(dataset: str, data_dir: str | None = None) -> tfds.core.DatasetBuilder:
    """The TFDS builder for `dataset`; the project's own datasets are prepared if needed."""
    if dataset in LOCAL_BUILDERS:
        return LOCAL_BUILDERS[dataset](data_dir)
    try:
        return tfds.builder(dataset, data_dir=data_dir)
    except tfds.core.registered.DatasetNotFoundError as e:
        raise DataError(f"unknown TFDS dataset {dataset!r}: {str(e).splitlines()[0]}") from e


def class_names(dataset_name: str, data_dir: str | None = None, key: str = "label") -> list[str]:
    """Class names from the dataset's ClassLabel feature `key`; DataError if it has none."""
    features = get_builder(dataset_name, data_dir).info.features
    names = getattr(features[key], "names", None) if key in features else None
    if not names:
        raise DataError(f"dataset {dataset_name!r} has no class names (no ClassLabel feature "
                        f"{key!r}); zero-shot classification needs them")
    return list(names)


def not_prepared(dataset: str, data_dir: str | None = None) -> str | None:
    """Why `dataset` cannot be read from `data_dir` yet, with how to prepare it (one
    clause); None when it is prepared or is one of the project's own (LOCAL_BUILDERS, which
    prepare themselves). Reads only the catalogue and the folder: nothing is downloaded."""
    if dataset in LOCAL_BUILDERS:
        return None
    try:
        builder = tfds.builder(dataset, data_dir=data_dir)
    except tfds.core.registered.DatasetNotFoundError:
        return (f"TFDS dataset {dataset!r} is not in TFDS's catalogue: register a builder "
                "of it and prepare it")
    if builder.is_prepared():
        return None
    where = f"TFDS dataset {dataset!r} is not prepared in {builder.data_dir}"
    build = f"tfds build {dataset} --data_dir {data_dir or '~/tensorflow_datasets'}"
    if builder.MANUAL_DOWNLOAD_INSTRUCTIONS:
        manual = " ".join(builder.MANUAL_DOWNLOAD_INSTRUCTIONS.split())
        return (f"{where}: it needs a manual download ({manual[:200]}); put the files in "
                f"a folder DIR, then run `{build} --manual_dir DIR`")
    return f"{where}: prepare it with `{build}` (downloads it)"


def read_split(builder: tfds.core.DatasetBuilder, split: str,
               skip_images: str | None = None) -> tf.data.Dataset:
    """A split in its stored order (no file shuffling); the feature `skip_images` stays
    encoded (never decoded)."""
    decoders = {skip_images: tfds.decode.SkipDecoding()} if skip_images else None
    return builder.as_dataset(split=split, shuffle_files=False, decoders=decoders)
