"""A prepared TFDS split read from its files, local or in a bucket.

TFDS reads a builder's metadata (dataset_info.json, features, split sizes and file
instructions) through `etils.epath`, which the path layer points at fsspec's gcsfs for
gs:// (paths.py), but it reads the examples with `tf.data.TFRecordDataset`, whose gs://
access is TensorFlow's own GCS client: that one cannot be pointed at another endpoint
(docs/multihost.md). So a builder whose `data_dir` is a URL has its TFRecord files read by
the project's reader (data/tfrecord_io.py: the same framing and checksums) and parsed with
TFDS's parser and decoders; a local one is read exactly as TFDS reads it.
"""

from __future__ import annotations

import itertools
import os

import tensorflow as tf
import tensorflow_datasets as tfds

from contrastive_jax import paths
from contrastive_jax.data import tfrecord_io
from contrastive_jax.datasets.catalogue import read_split as read_local_split


def on_object_store(builder: tfds.core.DatasetBuilder) -> bool:
    """Whether the builder's files are behind a URL (gs://...), not on a local disk."""
    return paths.is_url(os.fspath(builder.data_dir))


def file_units(builder: tfds.core.DatasetBuilder, split: str) -> dict[str, tf.Tensor]:
    """The split's file instructions as columns: path, skip, take."""
    instructions = builder.info.splits[split].file_instructions
    return {"path": tf.constant([os.fspath(f.filename) for f in instructions], tf.string),
            "skip": tf.constant([int(f.skip) for f in instructions], tf.int64),
            "take": tf.constant([int(f.take) for f in instructions], tf.int64)}


def _records(path: bytes, skip: int, take: int):
    stop = None if take < 0 else skip + take  # take -1: to the end of the file
    return itertools.islice(tfrecord_io.iterate(path.decode()), skip, stop)


def examples(builder: tfds.core.DatasetBuilder, units: dict, decoders) -> tf.data.Dataset:
    """What `builder.as_dataset(split, shuffle_files=False, decoders=decoders)` yields for
    the split whose file instructions are `units` (columns path, skip, take): TFDS's
    reader (tensorflow_datasets core/reader.py) interleaves the instructions' files (its
    default ReadConfig: 16 files in blocks of 16, or one at a time for an ordered
    dataset), skips and takes in each, then parses and decodes each example."""
    from tensorflow_datasets.core import example_parser

    features = builder.info.features
    parser = example_parser.ExampleParser(features.get_serialized_info())

    if on_object_store(builder):
        def shard(u):
            return tf.data.Dataset.from_generator(
                _records, args=(u["path"], u["skip"], u["take"]),
                output_signature=tf.TensorSpec([], tf.string))
    else:
        def shard(u):
            return tf.data.TFRecordDataset(u["path"]).skip(u["skip"]).take(u["take"])

    def parse_and_decode(serialized):
        return features.decode_example(parser.parse_example(serialized), decoders=decoders)

    ds = tf.data.Dataset.from_tensor_slices(units).interleave(
        shard, cycle_length=1 if builder.info.disable_shuffling else 16, block_length=16,
        num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    # Called while tf.data traces an epoch: autograph must not convert TFDS's code.
    return ds.map(tf.autograph.experimental.do_not_convert(parse_and_decode),
                  num_parallel_calls=tf.data.AUTOTUNE)


def read_split(builder: tfds.core.DatasetBuilder, split: str,
               skip_images: str | None = None) -> tf.data.Dataset:
    """A split in its stored order (no file shuffling); the feature `skip_images` stays
    encoded (never decoded). From a bucket, through the project's reader."""
    if not on_object_store(builder):
        return read_local_split(builder, split, skip_images)
    decoders = {skip_images: tfds.decode.SkipDecoding()} if skip_images else None
    return examples(builder, file_units(builder, split), decoders)
