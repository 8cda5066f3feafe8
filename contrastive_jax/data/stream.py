"""The one training stream: `data.sources` (or `data.dataset`, a one-source tfds mixture)
as host-local batches, exactly resumable.

Each source's examples come from data/examples.py; several sources are mixed by a seeded
choice stream (data/mixture.py) whose first P choices say how many examples each source
served, so per-source positions follow from the process's position P. A process's stream
of examples does not depend on the batch size, so a resume at "examples read so far"
continues at the exact next example whatever the new batch size (with
`data.debiased_sampling`, one source per batch, it does, and a resume keeps the batch
size). One finish step turns a batch of examples into model inputs: images scaled (or
swapped for cached embeddings), captions tokenized (or rendered, CLIPPO), counters and
stream positions attached.
"""

from __future__ import annotations

import collections
from collections.abc import Iterator, Sequence

import ml_collections
import numpy as np
import tensorflow as tf

from contrastive_jax.data import positions, preprocess, records
from contrastive_jax.data.examples import NUM_COUNTERS, source_stream, usable
from contrastive_jax.data.mixture import mixture_choices, mixture_positions
from contrastive_jax.data.render_text import text_pairs
from contrastive_jax.data.sources import Source, create_source, source_specs
from contrastive_jax.errors import DataError
from contrastive_jax.filters import FilterCounters


def _options() -> tf.data.Options:
    options = tf.data.Options()
    options.deterministic = True  # parallel maps keep order: required for exact resume
    options.experimental_optimization.map_parallelization = True
    return options


def train_sources(data_config: ml_collections.ConfigDict) -> tuple[list[Source], list[float]]:
    """The run's sources and their mixture weights."""
    specs = source_specs(data_config)
    return [create_source(s, data_config) for s in specs], [s["weight"] for s in specs]


def train_dataset(
    data_config: ml_collections.ConfigDict, text_encoder, *, global_batch_size: int,
    process_index: int = 0, process_count: int = 1, start_example: int = 0, seed: int = 0,
    filter_counters: FilterCounters | None = None,
    image_embeddings: tuple[np.ndarray, np.ndarray] | None = None,
    resume_positions: Sequence[int] | None = None,
) -> tf.data.Dataset:
    """Infinite host-local batches {"image" f32 [b,H,W,C], "text", "label" i32 [b],
    "data_counts" int64 [S, K], "stream_position" int64 [S]}, b = global_batch_size //
    process_count, from global example `start_example` on.

    `text_encoder`: a Tokenizer ("text" int32 [b, L]) or a TextRenderer (CLIPPO: "text" is
    the rendered captions and `data.render.text_pair_fraction` of the images become
    renderings of another caption of the same label).
    "data_counts" holds, per source, the cumulative [seen, skipped per reason] of this
    process's stream (since it started) up to the batch's last example (COUNTER_KEYS).
    `image_embeddings` = (uids [N], embeddings [N, D]): batches carry "image_embedding"
    [b, D] looked up by each example's uid instead of "image"; the stream's order and
    positions are the same as with images. `resume_positions`, the latest
    "stream_position" of the run being resumed (data/positions.py), spares the resume the
    counting of an epoch.
    """
    cfg = data_config
    if global_batch_size % process_count or start_example % process_count:
        raise DataError(f"a global batch of {global_batch_size} and a resume at example "
                        f"{start_example} must both split evenly over {process_count} "
                        f"processes")
    sources, weights = train_sources(cfg)
    position = start_example // process_count  # examples this process has already served
    local_batch = global_batch_size // process_count
    # ZeroVL's debiased sampling: one source per batch (data/mixture.py).
    group = local_batch if cfg.debiased_sampling else 1
    starts = mixture_positions(weights, seed, position, group) if len(sources) > 1 else [
        position]
    saved = positions.resume_points(resume_positions, len(sources)) if position else None
    streams = [
        source_stream(src, cfg, k=k, num_sources=len(sources), seed=seed,
                      process_index=process_index, process_count=process_count, start=start,
                      counters=filter_counters, resume=saved[k] if saved else None,
                      keep_images=image_embeddings is None)
        for k, (src, start) in enumerate(zip(sources, starts, strict=True))
    ]  # fmt: skip
    if len(streams) == 1:
        ds = streams[0]
    else:
        choices = mixture_choices(weights, seed, position, group)
        ds = tf.data.Dataset.choose_from_datasets(streams, choices, stop_on_empty_dataset=True)
    # Batches numbered by their place in the stream: the text-pair choice is keyed by it.
    ds = ds.batch(local_batch, drop_remainder=True).enumerate(start=position // local_batch)
    finish = _finish(cfg, text_encoder, seed, process_index, image_embeddings)
    ds = ds.map(finish, num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE).with_options(_options())


def _finish(cfg: ml_collections.ConfigDict, text_encoder, seed: int, process_index: int,
            image_embeddings: tuple[np.ndarray, np.ndarray] | None):
    """The one step from a batch of examples to model inputs."""
    lo, hi = (float(v) for v in cfg.value_range)
    pair_fraction = cfg.render.text_pair_fraction if cfg.render.enabled else 0.0
    lookup = None if image_embeddings is None else _embedding_lookup(*image_embeddings)

    def finish(index, batch):
        captions = preprocess.clean_captions(batch["caption"], cfg.lowercase)
        text = text_encoder.tf_tokenize(captions, cfg.max_len)
        out = {"text": text, "label": batch["label"],
               "data_counts": tf.reduce_max(batch["counts"], axis=0),
               positions.KEY: tf.reduce_max(batch[positions.KEY], axis=0)}
        if lookup is not None:
            return {**out, "image_embedding": lookup(batch["uid"])}
        image = batch["image"] * ((hi - lo) / 255.0) + lo
        if pair_fraction > 0:
            key = tf.stack([tf.constant(seed, tf.int64) * 4099 + process_index, index])
            image = text_pairs(image, text, batch["label"], pair_fraction, key)
        return {**out, "image": image}

    return finish


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


def counter_metrics(counts: np.ndarray) -> dict[str, int]:
    """{"data/seen": ..., "data/skipped/<reason>": ...} from [S, K] (or [K]) counts."""
    totals = np.asarray(counts).reshape(-1, NUM_COUNTERS).sum(axis=0)
    return {key: int(v) for key, v in zip(records.COUNTER_KEYS, totals, strict=True)}


def _whole_source(source: Source, cfg: ml_collections.ConfigDict) -> tf.data.Dataset:
    units = source.units(0, 1)
    return source.read(units, tf.range(len(units), dtype=tf.int64), cfg.cycle_length)


def whole_sources(data_config: ml_collections.ConfigDict) -> Iterator[tf.data.Dataset]:
    """Per training source, all of its usable examples ("image" uint8 decoded, "caption",
    "uid", "label", ...) in stored order, unfiltered and unaugmented: for the passes that
    read the data once (embedding cache, `data score`, `data dedup`)."""
    for source in train_sources(data_config)[0]:
        yield usable(_whole_source(source, data_config), data_config)


def uid_image_batches(data_config: ml_collections.ConfigDict,
                      batch_size: int) -> Iterator[dict[str, np.ndarray]]:
    """{"uid" [n], "image" f32 [n,H,W,C]} numpy batches of every usable example of every
    source, in stored order, unaugmented (n = batch_size, except the last); for the
    embedding cache. Undecodable records are skipped, as in training."""
    cfg = data_config

    def scaled(ex):
        return {"uid": ex["uid"],
                "image": preprocess.scale_images(ex["image"], cfg.value_range, cfg.image_size)}

    for ds in whole_sources(cfg):
        ds = ds.map(scaled, num_parallel_calls=tf.data.AUTOTUNE)
        ds = ds.batch(batch_size).prefetch(tf.data.AUTOTUNE).with_options(_options())
        yield from ds.as_numpy_iterator()


def source_captions(data_config: ml_collections.ConfigDict, limit: int) -> Iterator[str]:
    """Up to `limit` cleaned usable captions per source, in stored order (for tokenizer
    training); images are not decoded. A source without one is a DataError naming it and
    its skipped records by reason (sentencepiece would otherwise fail on no input)."""
    for source in train_sources(data_config)[0]:
        def clean(r):
            ok = tf.equal(r["reason"], records.OK)
            return r["reason"], tf.cond(ok, lambda: preprocess.clean_captions(
                r["caption"], data_config.lowercase), lambda: tf.constant(b""))

        it = _whole_source(source, data_config).map(records.check_caption).map(clean)
        it, served, skipped = it.as_numpy_iterator(), 0, collections.Counter()
        while served < limit:
            try:
                reason, caption = next(it)
            except StopIteration:
                break
            except tf.errors.InvalidArgumentError:  # a record that does not parse: skipped
                skipped["unparseable_record"] += 1  # (the training stream counts it too)
                continue
            if reason != records.OK:
                skipped[records.REASONS[reason - 1]] += 1
                continue
            served += 1
            yield caption.decode("utf-8")
        if not served:
            counts = ", ".join(f"{k} {v}" for k, v in sorted(skipped.items())) or "no records"
            raise DataError(f"training source {source.name} has no usable caption to train "
                            f"the tokenizer on (skipped: {counts})")
