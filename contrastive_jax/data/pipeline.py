"""Train and eval input pipelines: TFDS source -> host-local batches, exactly resumable.

The training stream of one process is a fixed function of (config, seed, process):
epoch e is the process's part of the split, shuffled with a seed derived from (seed, e),
and epochs are concatenated before batching. Resuming at `start_example` (examples of the
GLOBAL stream consumed, i.e. step * global_batch_size) starts at epoch `pos // n` and skips
`pos % n` examples of it, where pos is this process's share of `start_example` and n the
number of usable examples in its part; so a resumed stream equals the uninterrupted one.
n is counted only up to pos + 1, so a resume inside the first epoch reads no further; with
the stream position saved in the checkpoint (data/positions.py) it is not counted at all.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

import ml_collections
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from contrastive_jax import filters
from contrastive_jax.data import positions, preprocess
from contrastive_jax.data.render_text import TextRenderer, text_pairs
from contrastive_jax.data.tokenizer import Tokenizer, train_tokenizer
from contrastive_jax.datasets import fashion_mnist_captions, fashion_mnist_noisy

# Builders this project ships and can prepare offline on first use.
_LOCAL_BUILDERS = {
    "fashion_mnist_captions": fashion_mnist_captions.build_fashion_mnist_captions,
    "fashion_mnist_captions_noisy": fashion_mnist_noisy.build_fashion_mnist_noisy,
}


def get_builder(dataset: str, data_dir: str | None = None) -> tfds.core.DatasetBuilder:
    """The TFDS builder for `dataset`; the project's own datasets are prepared if needed."""
    if dataset in _LOCAL_BUILDERS:
        return _LOCAL_BUILDERS[dataset](data_dir)
    return tfds.builder(dataset, data_dir=data_dir)


def class_names(dataset_name: str, data_dir: str | None = None, key: str = "label") -> list[str]:
    """Class names from the dataset's ClassLabel feature `key`; ValueError if it has none."""
    features = get_builder(dataset_name, data_dir).info.features
    names = getattr(features[key], "names", None) if key in features else None
    if not names:
        raise ValueError(f"dataset {dataset_name!r} has no class names (no ClassLabel feature "
                         f"{key!r}); zero-shot classification needs them")
    return list(names)


def _options() -> tf.data.Options:
    options = tf.data.Options()
    options.deterministic = True  # parallel maps keep order: required for exact resume
    options.experimental_optimization.map_parallelization = True
    return options


def _read(builder: tfds.core.DatasetBuilder, split: str, skip_images: str | None = None):
    """Reads a split in its stored order (no file shuffling)."""
    decoders = {skip_images: tfds.decode.SkipDecoding()} if skip_images else None
    return builder.as_dataset(split=split, shuffle_files=False, decoders=decoders)


def _examples(cfg: ml_collections.ConfigDict, builder, split: str,
              skip_images: bool = False) -> tf.data.Dataset:
    """Image/caption/label/uid records of `split` with empty captions removed (and logged).

    `skip_images`: images stay encoded bytes (never decoded), for streams that do not use them.
    """
    features = builder.info.features

    def select(ex):
        out = {"image": ex[cfg.image_key], "caption": ex[cfg.text_key]}
        out["label"] = tf.cast(ex[cfg.label_key], tf.int32) if cfg.label_key else tf.constant(-1)
        out["uid"] = ex["uid"] if "uid" in features.keys() else tf.constant("")
        return out

    ds = _read(builder, split, skip_images=cfg.image_key if skip_images else None)
    ds = ds.map(select, num_parallel_calls=tf.data.AUTOTUNE)
    return ds.filter(lambda ex: preprocess.valid_caption(ex["caption"], ex["uid"]))


def _usable_up_to(cfg: ml_collections.ConfigDict, builder, split: str, limit: int) -> int:
    """Usable examples in one epoch of `split` (after `data.filters`), counting no further
    than `limit`. Without filters it reads captions only."""
    filtered = filters.filters_active(cfg.filters)
    key = (str(builder.data_dir), split, cfg.text_key, cfg.image_key)
    if not filtered and key in _EPOCH_SIZES:
        return min(_EPOCH_SIZES[key], limit)
    if filtered:
        ds = _filtered(cfg, builder, split)
    else:  # the same rule as the caption filter in _examples, or positions would drift
        ds = _read(builder, split, skip_images=cfg.image_key)
        ds = ds.filter(lambda ex: preprocess.has_text(ex[cfg.text_key]))
    n = int(ds.take(limit).reduce(np.int64(0), lambda acc, _: acc + 1))
    if not filtered and n < limit:
        _EPOCH_SIZES[key] = n
    return n


# (dataset dir, split, keys) -> usable examples per epoch without filters; prepared TFDS
# data does not change under a version.
_EPOCH_SIZES: dict[tuple[str, str, str, str], int] = {}


def _filtered(cfg, builder, split: str, counters: filters.FilterCounters | None = None,
              skip_images: bool = False) -> tf.data.Dataset:
    """`split` (this process's part of the train split) through `data.filters`. MetaCLIP
    counts over the whole train split, so every process balances with the same counts."""
    whole_split = (filters.filters_active(cfg.filters) and cfg.filters.metaclip.enabled
                   and split != cfg.train_split)
    pool = _examples(cfg, builder, cfg.train_split, skip_images) if whole_split else None
    return filters.apply_filters(_examples(cfg, builder, split, skip_images), cfg.filters,
                                 counters=counters, dataset=cfg.dataset, data_dir=cfg.data_dir,
                                 pool=pool)


def train_dataset(
    data_config: ml_collections.ConfigDict,
    tokenizer: Tokenizer | TextRenderer,
    *,
    global_batch_size: int,
    process_index: int = 0,
    process_count: int = 1,
    start_example: int = 0,
    seed: int = 0,
    filter_counters: filters.FilterCounters | None = None,
    image_embeddings: tuple[np.ndarray, np.ndarray] | None = None,
    resume_positions: Sequence[int] | None = None,
) -> tf.data.Dataset:
    """Infinite host-local batches {"image" f32 [b,H,W,C], "text" i32 [b,L], "label" i32 [b]}.

    With a `TextRenderer` for `tokenizer` (CLIPPO), "text" is the rendered captions
    f32 [b,H,W,C] and `data.render.text_pair_fraction` of the images become renderings of
    another caption of the same label.

    b = global_batch_size // process_count. Each process reads a disjoint, equal-sized part
    of the split. The stream resumes exactly at `start_example` (see module docstring).
    With `data.sources`, see data/stream.py (batches then carry "data_counts" too).
    `data.filters` apply to the examples of every epoch; `filter_counters` gets their counts.
    `image_embeddings` = (uids [N], embeddings [N, D]): batches carry "image_embedding"
    [b, D] looked up by each example's uid instead of "image" (images are not decoded). The
    stream's order and resume positions are the same as with images.
    Batches also carry "stream_position" int64 [S] (one per source; S = 1 without
    `data.sources`); `resume_positions`, the latest of them when resuming at `start_example`,
    spares the resume the counting of an epoch (data/positions.py).
    """
    cfg = data_config
    if global_batch_size % process_count or start_example % process_count:
        raise ValueError(
            f"global_batch_size={global_batch_size} and start_example={start_example} must "
            f"be multiples of process_count={process_count}"
        )
    if cfg.sources:
        from contrastive_jax.data.stream import train_dataset_from_sources

        ds = train_dataset_from_sources(
            cfg, tokenizer, global_batch_size=global_batch_size, process_index=process_index,
            process_count=process_count, start_example=start_example, seed=seed,
            filter_counters=filter_counters, resume_positions=resume_positions)
        return ds.prefetch(tf.data.AUTOTUNE).with_options(_options())
    local_batch = global_batch_size // process_count
    builder = get_builder(cfg.dataset, cfg.data_dir)
    # drop_remainder: equal parts, so every process has as many examples per epoch.
    split = tfds.even_splits(cfg.train_split, n=process_count, drop_remainder=True)[process_index]

    position = start_example // process_count  # examples this process has already served
    first_epoch, skip = 0, 0
    saved = positions.resume_points(resume_positions, 1) if position else None
    if saved:
        (first_epoch, skip), = saved
        logging.info("%s %s: resuming at epoch %d + %d examples (saved stream position)",
                     cfg.dataset, split, first_epoch, skip)
    elif position:
        # Only a resume needs the epoch length, and only past `position`: counting stops at
        # position + 1, so a resume inside the first epoch reads no further than it.
        n_usable = _usable_up_to(cfg, builder, split, position + 1)
        if n_usable == 0:
            raise ValueError(f"{cfg.dataset} {split}: no example with a usable caption")
        first_epoch, skip = divmod(position, n_usable)  # (0, position) inside epoch 0
        logging.info("%s %s: resuming at epoch %d + %d examples (%s usable per epoch)",
                     cfg.dataset, split, first_epoch, skip,
                     n_usable if n_usable <= position else f"more than {position}")
    examples = _filtered(cfg, builder, split, filter_counters,
                         skip_images=image_embeddings is not None)
    if not position and not list(examples.take(1)):
        # Without this, an epoch with no usable example makes the repeat loop spin forever.
        raise ValueError(f"{cfg.dataset} {split}: no example with a usable caption")

    def epoch(e: tf.Tensor) -> tf.data.Dataset:
        # A new explicit seed per epoch: a different order each epoch, reproducible anywhere.
        epoch_seed = tf.cast(seed, tf.int64) * 1_000_003 + e
        ds = examples.shuffle(cfg.shuffle_buffer, seed=epoch_seed, reshuffle_each_iteration=False)
        # Beside each example, its stream position: (epoch, examples of it served up to and
        # with this one). Zipped, so no function runs per example in this hot loop.
        return tf.data.Dataset.zip((ds, positions.of_epoch(e)))

    ds = tf.data.Dataset.range(first_epoch, np.iinfo(np.int64).max).flat_map(epoch).skip(skip)
    if cfg.flip:
        # Flip decided by (seed, process, stream position): identical on resume.
        def flip(pos, item):
            ex, served = item
            key = tf.stack([tf.constant(seed, tf.int64) * 4099 + process_index, pos])
            return {**ex, "image": preprocess.random_flip(ex["image"], key)}, served

        ds = ds.enumerate(start=position).map(flip, num_parallel_calls=tf.data.AUTOTUNE)
    # Batches numbered by their position in the stream: the text-pair choice is keyed by it.
    ds = ds.batch(local_batch, drop_remainder=True).enumerate(start=position // local_batch)
    pair_fraction = cfg.render.text_pair_fraction if cfg.render.enabled else 0.0

    lookup = None if image_embeddings is None else _embedding_lookup(*image_embeddings)

    def finish(index, item):
        batch, served = item
        captions = preprocess.clean_captions(batch["caption"], cfg.lowercase)
        text = tokenizer.tf_tokenize(captions, cfg.max_len)
        out = {"text": text, "label": batch["label"],
               positions.KEY: tf.reduce_max(served, keepdims=True)}
        if lookup is not None:
            out["image_embedding"] = lookup(batch["uid"])
            return out
        image = preprocess.scale_images(batch["image"], cfg.value_range, cfg.image_size)
        if pair_fraction > 0:
            key = tf.stack([tf.constant(seed, tf.int64) * 4099 + process_index, index])
            image = text_pairs(image, text, batch["label"], pair_fraction, key)
        return {**out, "image": image}

    ds = ds.map(finish, num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE).with_options(_options())


def _embedding_lookup(uids: np.ndarray, embeddings: np.ndarray):
    """uid string tensor [b] -> rows of `embeddings` [b, D]; an unknown uid is an error."""
    table = tf.lookup.StaticHashTable(
        tf.lookup.KeyValueTensorInitializer(tf.constant(uids, tf.string),
                                            tf.range(len(uids), dtype=tf.int64)),
        default_value=-1)
    rows = tf.constant(embeddings, tf.float32)

    def lookup(uid: tf.Tensor) -> tf.Tensor:
        index = table.lookup(uid)
        check = tf.debugging.assert_non_negative(
            index, message="embedding cache has no entry for an example's uid; delete the "
                           "cache to rebuild it")
        with tf.control_dependencies([check]):
            return tf.gather(rows, index)

    return lookup


def uid_image_batches(data_config: ml_collections.ConfigDict, split: str, batch_size: int):
    """Yields {"uid" [n], "image" f32 [n,H,W,C]} numpy batches of all of `split`, in stored
    order (n = batch_size, except the last); for precomputing image embeddings."""
    cfg = data_config
    builder = get_builder(cfg.dataset, cfg.data_dir)
    if "uid" not in builder.info.features.keys():
        raise ValueError(f"dataset {cfg.dataset!r} has no 'uid' feature, which an embedding "
                         f"cache is keyed by")

    def finish(batch):
        return {"uid": batch["uid"],
                "image": preprocess.scale_images(batch[cfg.image_key], cfg.value_range,
                                                 cfg.image_size)}

    ds = _read(builder, split).batch(batch_size).map(finish, num_parallel_calls=tf.data.AUTOTUNE)
    yield from ds.prefetch(tf.data.AUTOTUNE).with_options(_options()).as_numpy_iterator()


def eval_dataset(
    data_config: ml_collections.ConfigDict, *, split: str, batch_size: int
) -> tf.data.Dataset:
    """Batches {"image", "label", "mask"} of `split` in stored order, read once.

    The last batch is padded to `batch_size` with mask 0 (label -1), so every example is
    seen exactly once and shapes stay fixed. Batches are global: every process reads all of
    them and feeds only its own rows to the mesh (`zeroshot_accuracy`).
    """
    cfg = data_config
    builder = get_builder(cfg.dataset, cfg.data_dir)

    def select(ex):
        label = tf.cast(ex[cfg.label_key], tf.int32) if cfg.label_key else tf.constant(-1)
        return {"image": ex[cfg.image_key], "label": label}

    ds = _read(builder, split).map(select, num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.batch(batch_size)

    def finish(batch):
        batch = {**batch, "image": preprocess.scale_images(
            batch["image"], cfg.value_range, cfg.image_size)}  # fmt: skip
        return preprocess.pad_batch(batch, batch_size)

    ds = ds.map(finish, num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE).with_options(_options())


def labels(data_config: ml_collections.ConfigDict, split: str, dataset: str | None = None):
    """int64 [N]: the labels of a split in stored order (the images are not decoded)."""
    cfg = data_config
    builder = get_builder(dataset or cfg.dataset, cfg.data_dir)
    ds = _read(builder, split, skip_images=cfg.image_key).map(lambda ex: ex[cfg.label_key])
    chunks = list(ds.batch(8192).as_numpy_iterator())
    return np.concatenate(chunks).astype(np.int64) if chunks else np.zeros(0, np.int64)


def captions(data_config: ml_collections.ConfigDict, split: str | None = None):
    """Yields the (cleaned) captions of a split as str, skipping images; for tokenizer training.

    With `sources`, the first TOKENIZER_CAPTIONS usable captions of each source.
    """
    cfg = data_config
    if cfg.sources and split is None:
        from contrastive_jax.data.stream import source_captions

        yield from source_captions(cfg, TOKENIZER_CAPTIONS)
        return
    builder = get_builder(cfg.dataset, cfg.data_dir)
    ds = _read(builder, split or cfg.train_split, skip_images=cfg.image_key)
    ds = ds.map(lambda ex: preprocess.clean_captions(ex[cfg.text_key], cfg.lowercase))
    for batch in ds.batch(4096).as_numpy_iterator():
        for caption in batch:
            if caption:
                yield caption.decode("utf-8", "replace")


TOKENIZER_CAPTIONS = 1_000_000  # per source; plenty for a sentencepiece model


def text_renderer(data_config: ml_collections.ConfigDict) -> TextRenderer:
    """Renders captions as the data's images (CLIPPO), in the image value range."""
    return TextRenderer(data_config.render, image_size=data_config.image_size,
                        value_range=data_config.value_range, lowercase=data_config.lowercase)


def ensure_tokenizer(data_config: ml_collections.ConfigDict,
                     workdir: str) -> Tokenizer | TextRenderer:
    """The configured tokenizer; without a path, one trained on the train captions.

    The trained model is saved as `workdir/tokenizer.model` and reused when present, so a
    resumed run tokenises exactly as before. With `data.render.enabled` (CLIPPO) the
    captions are rendered instead, and this returns the renderer.
    """
    if data_config.render.enabled:
        return text_renderer(data_config)
    if data_config.tokenizer.path:
        return Tokenizer(data_config.tokenizer.path)
    path = os.path.join(workdir, "tokenizer.model")
    if not os.path.exists(path):
        prefix = path[: -len(".model")]
        train_tokenizer(captions(data_config), prefix, data_config.tokenizer.vocab_size,
                        lowercase=data_config.lowercase)  # fmt: skip
    return Tokenizer(path)
