"""The one training stream: `data.sources` (or `data.dataset`, a one-source tfds mixture)
as host-local batches, exactly resumable on any process count that divides the run's
logical streams (data/order.py: the global order is a function of the config, the seed and
the data; each process serves its share of the logical streams).

Each source's examples come from data/examples.py; in each logical stream several sources
are mixed by a seeded choice stream (data/mixture.py) whose first P choices say how many
examples each source served, so per-source positions follow from the stream's position P.
A logical stream's examples do not depend on the batch size, so a resume at "examples read
so far" continues every stream at its exact next example whatever the new batch size (but
for `data.debiased_sampling`, one source per batch, where a resume keeps the batch size).
One finish step turns a batch of examples into model inputs: images scaled (or swapped for
cached embeddings), captions tokenized (or rendered, CLIPPO), counters and stream
positions attached.
"""

from __future__ import annotations

import collections
from collections.abc import Iterator, Sequence

import ml_collections
import numpy as np
import tensorflow as tf

from contrastive_jax.data import naflex_stream, order, positions, preprocess, records
from contrastive_jax.data.examples import (
    NUM_COUNTERS,
    curation,
    read_all,
    resume_points,
    source_stream,
    usable,
)
from contrastive_jax.data.filters import FilterCounters
from contrastive_jax.data.mixture import mixture_choices, mixture_positions
from contrastive_jax.data.render_text import text_pairs
from contrastive_jax.data.sources import Source, create_source, source_specs
from contrastive_jax.errors import DataError


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
    resume_positions: Sequence[int] | None = None, logical_streams: int | None = None,
    naflex_patch: int = 0, naflex_batch_sizes: Sequence[int] | None = None,
    start_step: int | None = None,
) -> tf.data.Dataset:
    """Infinite host-local batches {"image" f32 [b,H,W,C], "text", "label" i32 [b],
    "data_counts" int64 [l*S, K], "stream_position" int64 [l*S]}, b = global_batch_size //
    process_count, from global example `start_example` on: this process's rows of the
    global batches of data/order.py, whose l = L / process_count logical streams (L =
    `logical_streams`, default `data.logical_streams`, 0 there: `order.resolve`) it serves.

    `text_encoder`: a Tokenizer ("text" int32 [b, L]) or a TextRenderer (CLIPPO: "text" is
    the rendered captions and `data.render.text_pair_fraction` of the images become
    renderings of another caption of the same label).
    "data_counts" holds, per served stream and source, the cumulative [seen, skipped per
    reason] of that stream (since it started) up to the batch's last example
    (COUNTER_KEYS). `image_embeddings` = (uids [N], embeddings [N, D]): batches carry
    "image_embedding" [b, D] looked up by each example's uid instead of "image"; the
    stream's order and positions are the same as with images. `resume_positions`, the
    latest "stream_position" of the run being resumed for this process's streams
    (data/positions.py), spares the resume the counting of an epoch.
    With `data.naflex.budgets` (data/naflex_stream.py), images come at their own size,
    cut into patches of `naflex_patch` (the model's patch size): "image" gives way to
    naflex_stream.KEYS, one budget of patches per global batch, global batch n (n from
    `start_step`, default start_example // global_batch_size) at the budget drawn for n.
    `naflex_batch_sizes`: token-budget batching's global batch size per budget
    (naflex_stream.token_batch_sizes), each split over the logical streams; None:
    `global_batch_size` at every budget.
    """
    cfg = data_config
    naflex = naflex_stream.enabled(cfg)
    if naflex and naflex_patch < 1:
        raise ValueError("a NaFlex stream needs the model's patch size (naflex_patch)")
    streams = logical_streams or order.resolve(cfg.get("logical_streams", 0),
                                               global_batch_size, process_count)
    mine = order.process_streams(streams, process_index, process_count)
    order.check_batch(streams, global_batch_size, "a global batch")
    order.check_batch(streams, start_example, "a resume at the examples read so far")
    sources, weights = train_sources(cfg)
    chunk, position = global_batch_size // streams, start_example // streams
    first_step = start_example // global_batch_size if start_step is None else start_step
    if naflex:  # examples per logical stream in a batch, per budget
        sizes = naflex_batch_sizes or [global_batch_size] * len(cfg.naflex.budgets)
        for size in sizes:
            order.check_batch(streams, size, "a global batch")
        chunks = [size // streams for size in sizes]
    # ZeroVL's debiased sampling: one source per batch (data/mixture.py). Every stream
    # then draws the same choices; otherwise each its own (stream 0: the run's seed).
    group = chunk if cfg.debiased_sampling else 1

    def mix_seed(stream):
        return seed if cfg.debiased_sampling else seed + 1_000_003 * stream

    # [stream][source]: the examples each source has served in each of my streams.
    starts = [mixture_positions(weights, mix_seed(s), position, group) for s in mine] if (
        len(sources) > 1) else [[position]] * len(mine)
    saved = None
    if resume_positions is not None and len(resume_positions) == len(mine) * len(sources):
        saved = np.reshape(np.asarray(resume_positions, np.int64), (len(mine), -1)).tolist()
    points = []
    for k, src in enumerate(sources):
        per_stream = [positions.resume_points(p, len(sources)) for p in saved] if (
            saved and position) else None
        points.append(resume_points(
            src, cfg, streams=streams, mine=mine, starts=[st[k] for st in starts],
            saved=[p[k] for p in per_stream] if per_stream and all(per_stream) else None,
            filters=curation(cfg, src)))
    filters = [curation(cfg, src, filter_counters) for src in sources]
    lookup = None if image_embeddings is None else _embedding_lookup(*image_embeddings)
    per_stream, joined = _finish(cfg, text_encoder, seed, lookup)

    def one_stream(i: tf.Tensor) -> tf.data.Dataset:
        """Logical stream mine[i] in finished batches of `chunk`, from its `position`-th
        example; its sources from their `starts`, the mixture drawing one choice per
        `group` examples. `i` may be a tensor: traced once for every stream served."""
        stream = tf.cast(mine.start + i, tf.int64)
        per_source = [source_stream(
            src, cfg, k=k, num_sources=len(sources), seed=seed, stream=stream,
            streams=streams, start=_at([st[k] for st in starts], i),
            first_epoch=_at(point[0], i), skip=_at(point[1], i), raw_skip=point[2],
            filters=filters[k], keep_images=image_embeddings is None)
            for k, (src, point) in enumerate(zip(sources, points, strict=True))]
        if len(per_source) == 1:
            ds = per_source[0]
        else:
            ds = tf.data.Dataset.choose_from_datasets(
                per_source, mixture_choices(weights, mix_seed(stream), position, group),
                stop_on_empty_dataset=True)
        if naflex:  # batch n's budget: a draw of (seed, n)
            ds = naflex_stream.patchified(ds, cfg, seed=seed, chunks=chunks, patch=naflex_patch,
                                          start_step=first_step)
        else:  # numbered by their place in the stream: the text-pair choice is keyed by it
            ds = ds.batch(chunk, drop_remainder=True).enumerate(start=position // chunk)
        if len(mine) == 1 and joined is not None:  # one function call per batch
            return ds.map(lambda index, batch: joined(per_stream(stream, index, batch)),
                          num_parallel_calls=tf.data.AUTOTUNE)
        return ds.map(lambda index, batch: per_stream(stream, index, batch),
                      num_parallel_calls=tf.data.AUTOTUNE)

    if len(mine) == 1:
        ds = one_stream(tf.constant(0, tf.int64))
    else:
        # A process serving several streams puts their chunks side by side, as the global
        # batch holds them (data/order.py): one chunk of each stream in turn, then joined.
        ds = tf.data.Dataset.range(len(mine)).interleave(
            one_stream, cycle_length=len(mine), block_length=1,
            num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        ds = ds.batch(len(mine), drop_remainder=True).map(
            lambda chunks: _side_by_side(chunks, joined), num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE).with_options(_options())


def _at(values: list[int], i: tf.Tensor) -> tf.Tensor:
    return tf.gather(tf.constant(values, tf.int64), i)


def _side_by_side(chunks: dict[str, tf.Tensor], joined) -> dict[str, tf.Tensor]:
    """[l, chunk, ...] per key (one chunk per stream) -> [l * chunk, ...], then `joined`."""
    batch = {key: tf.reshape(v, tf.concat([[-1], tf.shape(v)[2:]], 0))
             for key, v in chunks.items()}
    return batch if joined is None else joined(batch)


def _finish(cfg: ml_collections.ConfigDict, text_encoder, seed: int, lookup):
    """The step from a batch of one logical stream's examples to model inputs (`lookup`:
    uid -> image embedding, for embedding-cache runs), in two parts: (per_stream, joined).
    per_stream(stream, index, batch) takes the stream's counters and positions; joined
    (None: nothing left) cleans, tokenizes and scales the rows of all the streams a process
    serves at once: per row, so the same as per stream, without a function call per
    stream's small chunk. CLIPPO's text pairs need a stream's own key: all per stream."""
    lo, hi = (float(v) for v in cfg.value_range)
    pair_fraction = cfg.render.text_pair_fraction if cfg.render.enabled else 0.0

    def joined(batch):
        captions = preprocess.clean_captions(batch["caption"], cfg.lowercase)
        out = {"text": text_encoder.tf_tokenize(captions, cfg.max_len), "label": batch["label"],
               "data_counts": batch["data_counts"], positions.KEY: batch[positions.KEY]}
        if lookup is not None:
            return {**out, "image_embedding": lookup(batch["uid"])}
        if naflex_stream.PATCHES in batch:  # scaled to value_range by naflex_patches
            return {**out, **{k: batch[k] for k in naflex_stream.KEYS}}
        return {**out, "image": batch["image"] * ((hi - lo) / 255.0) + lo}

    def per_stream(stream, index, batch):
        rows = {k: v for k, v in batch.items()
                if k in ("caption", "label", "uid", "image", *naflex_stream.KEYS)}
        out = {**rows, "data_counts": tf.reduce_max(batch["counts"], axis=0),
               positions.KEY: tf.reduce_max(batch[positions.KEY], axis=0)}
        if pair_fraction <= 0:
            return out
        out = joined(out)
        key = tf.stack([tf.constant(seed, tf.int64) * 4099 + stream, index])
        return {**out, "image": text_pairs(out["image"], out["text"], out["label"],
                                           pair_fraction, key)}

    return per_stream, None if pair_fraction > 0 else joined


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
    return read_all(source, cfg.cycle_length)


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
