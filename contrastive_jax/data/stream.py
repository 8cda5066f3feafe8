"""Training stream from `data.sources`: shard split, shuffles, bad-record counts, exact resume.

Per source and process, the stream is a fixed function of (config, seed, process):
epoch e reads this process's units (files[process::count]) in an order shuffled with a
seed from (seed, source, e), `cycle_length` files interleaved in parallel
(deterministically), through a shuffle buffer seeded from (seed, source, e). Records then
pass the caption check and a guarded decode; bad ones are counted per reason and dropped.

Resume: a process that has served p examples of a source starts at epoch p // n and skips
p % n usable examples of it, n being the process's usable examples per epoch (counted on
resume only, and only up to p + 1: a resume inside the first epoch reads no further), or
at the position saved in the checkpoint (data/positions.py): epoch e and r raw records of
it read, which needs no counting and skips those r records without decoding them.
Several sources are mixed by a seeded choice stream whose first P choices say how many
examples each source served, so per-source positions follow from the global position.
Augmentation seeds come from (seed, process, source, position).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import ml_collections
import numpy as np
import tensorflow as tf

from contrastive_jax.data import augment, positions, preprocess, records
from contrastive_jax.data.sources import Source, create_source, parse_sources
from contrastive_jax.data.tokenizer import Tokenizer
from contrastive_jax.filters import FilterCounters, apply_filters, filters_active

log = logging.getLogger(__name__)

_MIX_BLOCK = 4096  # choices are drawn in blocks of this size (cheap to recount on resume)
_NUM_COUNTERS = len(records.COUNTER_KEYS)


def curation_hook(ds: tf.data.Dataset, data_config: ml_collections.ConfigDict, source: Source,
                  counters: FilterCounters | None = None) -> tf.data.Dataset:
    """Applies `data.filters` to decoded examples ("image" uint8, "caption", "uid", ...).

    The filters run in the resume counting pass too (without `counters`), so resume stays
    exact. MetaCLIP counts its entries over the whole source (all processes' shards), so
    every process balances with the same counts.
    """
    cfg = data_config
    if not filters_active(cfg.filters):
        return ds
    units = source.units(0, 1)
    pool = usable(source.read(units, tf.range(len(units), dtype=tf.int64), cfg.cycle_length), cfg)
    # dataset=None: MetaCLIP's default entries are a TFDS dataset's class names, which
    # would be the wrong list for these sources; it then needs an entries_file.
    return apply_filters(ds, cfg.filters, counters=counters, pool=pool, dataset=None)


def _decode(channels: int):
    def fn(index, record):
        ok = tf.equal(record["reason"], records.OK)
        image = tf.cond(ok, lambda: augment.decode(record["image_bytes"], channels),
                        lambda: tf.zeros([1, 1, channels], tf.uint8))  # fmt: skip
        out = {k: v for k, v in record.items() if k != "image_bytes"}
        return index, {**out, "image": image}

    return fn


def _count(state, element):
    """Cumulative [seen, skipped per reason]; dropped indices were undecodable images."""
    previous, counts = state
    index, ex = element
    counts = counts + tf.one_hot(ex["reason"], _NUM_COUNTERS, dtype=tf.int64)
    counts = counts + (index - previous - 1) * tf.one_hot(records.UNDECODABLE, _NUM_COUNTERS,
                                                          dtype=tf.int64)  # fmt: skip
    return (index, counts), {**ex, "counts": counts}


def usable(ds: tf.data.Dataset, data_config: ml_collections.ConfigDict,
           source: Source | None = None, counters: FilterCounters | None = None
           ) -> tf.data.Dataset:
    """Canonical records -> decoded usable examples with cumulative "counts" [K]; records
    zipped with their stream position (as `_epoch_records` yields them) keep it as KEY.

    With a `source`, its `data.filters` apply too (see curation_hook).
    """
    if isinstance(ds.element_spec, tuple):  # (record, stream position): _epoch_records
        def check(record, position):
            return {**records.check_caption(record), positions.KEY: position}
    else:
        check = records.check_caption
    ds = ds.map(check, num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.enumerate().map(_decode(data_config.channels), num_parallel_calls=tf.data.AUTOTUNE)
    # A decode error drops the element here; the gap in indices counts it in _count.
    ds = ds.ignore_errors()
    init = (tf.constant(-1, tf.int64), tf.zeros([_NUM_COUNTERS], tf.int64))
    ds = ds.scan(init, _count)
    ds = ds.filter(lambda ex: tf.equal(ex["reason"], records.OK))
    return ds if source is None else curation_hook(ds, data_config, source, counters)


def _epoch_records(source: Source, units: list, cfg, seed: int, k: int):
    n = len(units)

    def epoch(e):
        epoch_seed = tf.stack([tf.constant(seed * 1_000_003 + k, tf.int64), e])
        order = tf.range(n, dtype=tf.int64)
        if source.shuffle_units:
            order = tf.random.experimental.stateless_shuffle(order, seed=epoch_seed)
        ds = source.read(units, order, cfg.cycle_length)
        shuffle_seed = (tf.constant(seed, tf.int64) * 1_000_003 + k) * 65_537 + e
        ds = ds.shuffle(cfg.shuffle_buffer, seed=shuffle_seed, reshuffle_each_iteration=False)
        # Each record's stream position, in raw records: (epoch, records of it read up to and
        # with this one). Raw, not usable, so a saved resume skips records undecoded.
        # Zipped, not mapped: usable() merges it into the record in a map it runs anyway.
        return tf.data.Dataset.zip((ds, positions.of_epoch(e)))

    return epoch


# (source name, process, count, rules) -> usable examples per epoch of that process's part.
_COUNT_CACHE: dict[tuple, int] = {}


def usable_per_epoch(source: Source, units: list, cfg, process: tuple[int, int],
                     limit: int | None = None) -> int | None:
    """Usable examples in one epoch of `units`, or None if there are more than `limit`.

    Decodes up to `limit` + 1 images (all of the epoch without a limit); a full count is
    cached. A resume inside the first epoch thus never reads the rest of the data.
    """
    key = (source.name, process, cfg.channels, str(cfg.get("filters", "")))
    if key not in _COUNT_CACHE:
        ds = usable(source.read(units, tf.range(len(units), dtype=tf.int64), cfg.cycle_length),
                    cfg, source)  # fmt: skip
        if limit is not None:
            ds = ds.take(limit + 1)
        n = int(ds.reduce(np.int64(0), lambda acc, _: acc + 1))
        if limit is not None and n > limit:
            return None
        _COUNT_CACHE[key] = n
    return _COUNT_CACHE[key]


def _augment(cfg, seed: int, stream_id: int, k: int, num_sources: int):
    aug = cfg.augment

    def fn(position, ex):
        example_seed = tf.stack([tf.constant(seed * 4099 + stream_id, tf.int64), position])
        image = ex["image"]
        if aug.inception_crop:
            image = augment.inception_crop(image, example_seed, aug.crop_area, aug.crop_aspect)
        image = augment.resize(image, cfg.image_size)
        if cfg.flip:
            image = augment.flip(image, example_seed)
        if aug.color_jitter > 0:
            image = augment.color_jitter(image, example_seed, aug.color_jitter)
        if aug.grayscale > 0:
            image = augment.random_grayscale(image, example_seed, aug.grayscale)
        caption = preprocess.clean_captions(ex["caption"], cfg.lowercase)
        if aug.word_deletion > 0:
            caption = augment.random_word_deletion(caption, example_seed, aug.word_deletion)
        if aug.word_swaps > 0:
            caption = augment.random_word_swap(caption, example_seed, aug.word_swaps)
        mine = tf.one_hot(k, num_sources, dtype=tf.int64)
        return {"image": image, "caption": caption, "label": ex["label"],
                "counts": mine[:, None] * ex["counts"][None, :],
                positions.KEY: mine * ex[positions.KEY]}

    return fn


def source_stream(source: Source, cfg, *, k: int, num_sources: int, seed: int,
                  process_index: int, process_count: int, start: int,
                  counters: FilterCounters | None = None,
                  resume: tuple[int, int] | None = None) -> tf.data.Dataset:
    """Infinite augmented examples of one source for one process, from its `start`-th;
    `resume` = (epoch, raw records of it already read), saved by the checkpoint."""
    units = source.units(process_index, process_count)
    epoch = _epoch_records(source, units, cfg, seed, k)
    first_epoch, skip = 0, 0
    if start and resume:
        first_epoch, skip = resume
        log.info("%s: resuming at epoch %d + %d raw records (saved stream position)",
                 source.name, first_epoch, skip)
    elif start:
        n = usable_per_epoch(source, units, cfg, (process_index, process_count), limit=start)
        if n == 0:
            raise ValueError(f"{source.name}: no usable example for process {process_index}")
        # n None: the first epoch has more than `start` usable examples; resume inside it.
        first_epoch, skip = (0, start) if n is None else divmod(start, n)
        log.info("%s: resuming at epoch %d + %d examples (%s usable per epoch)", source.name,
                 first_epoch, skip, n or f"more than {start}")  # fmt: skip
    elif not list(usable(epoch(tf.constant(0, tf.int64)), cfg, source).take(1)):
        # Without this, a stream with no usable example makes the epoch loop spin forever.
        raise ValueError(f"{source.name}: no usable example for process {process_index}")
    ds = tf.data.Dataset.range(first_epoch, np.iinfo(np.int64).max).flat_map(epoch)
    if start and resume:  # `skip` counts raw records: skipped before anything is decoded
        ds = usable(ds.skip(skip), cfg, source, counters)
    else:  # `skip` counts usable examples
        ds = usable(ds, cfg, source, counters).skip(skip)
    ds = ds.enumerate(start=start)
    stream_id = process_index * num_sources + k
    return ds.map(_augment(cfg, seed, stream_id, k, num_sources),
                  num_parallel_calls=tf.data.AUTOTUNE)  # fmt: skip


def _choice_block(weights: Sequence[float], seed: int):
    logits = tf.math.log(tf.constant([w / sum(weights) for w in weights], tf.float32))[None]

    def block(j):
        return tf.random.stateless_categorical(logits, _MIX_BLOCK, seed=tf.stack(
            [tf.constant(seed * 131 + 17, tf.int64), j]), dtype=tf.int64)[0]  # fmt: skip

    return block


def mixture_choices(weights: Sequence[float], seed: int, start: int) -> tf.data.Dataset:
    """The infinite seeded stream of source indices, from its `start`-th element."""
    first, skip = divmod(start, _MIX_BLOCK)
    ds = tf.data.Dataset.range(first, np.iinfo(np.int64).max).map(_choice_block(weights, seed))
    return ds.unbatch().skip(skip)


def mixture_positions(weights: Sequence[float], seed: int, position: int) -> list[int]:
    """How many of the first `position` choices picked each source."""
    full, rest = divmod(position, _MIX_BLOCK)
    block = _choice_block(weights, seed)
    n = len(weights)
    counts = tf.data.Dataset.range(full).map(
        lambda j: tf.math.bincount(block(j), minlength=n, maxlength=n, dtype=tf.int64)
    ).reduce(tf.zeros([n], tf.int64), lambda a, b: a + b)  # fmt: skip
    counts += tf.math.bincount(block(tf.constant(full, tf.int64))[:rest], minlength=n,
                               maxlength=n, dtype=tf.int64)  # fmt: skip
    return [int(c) for c in counts.numpy()]


def train_dataset_from_sources(
    data_config: ml_collections.ConfigDict, tokenizer: Tokenizer, *, global_batch_size: int,
    process_index: int = 0, process_count: int = 1, start_example: int = 0, seed: int = 0,
    filter_counters: FilterCounters | None = None,
    resume_positions: Sequence[int] | None = None,
) -> tf.data.Dataset:
    """Infinite host-local batches {"image", "text", "label", "data_counts" int64 [S, K],
    "stream_position" int64 [S]} (see data/positions.py for the last and for
    `resume_positions`).

    "data_counts" holds, per source, the cumulative [seen, skipped per reason] of this
    process's stream (since it started) up to the batch's last example; see COUNTER_KEYS.
    """
    cfg = data_config
    specs = parse_sources(cfg.sources)
    sources = [create_source(s, cfg) for s in specs]
    position = start_example // process_count
    weights = [s["weight"] for s in specs]
    starts = mixture_positions(weights, seed, position) if len(sources) > 1 else [position]
    saved = positions.resume_points(resume_positions, len(sources)) if position else None
    streams = [
        source_stream(src, cfg, k=k, num_sources=len(sources), seed=seed,
                      process_index=process_index, process_count=process_count, start=start,
                      counters=filter_counters, resume=saved[k] if saved else None)
        for k, (src, start) in enumerate(zip(sources, starts, strict=True))
    ]  # fmt: skip
    if len(streams) == 1:
        ds = streams[0]
    else:
        choices = mixture_choices(weights, seed, position)
        ds = tf.data.Dataset.choose_from_datasets(streams, choices, stop_on_empty_dataset=True)
    ds = ds.batch(global_batch_size // process_count, drop_remainder=True)
    lo, hi = (float(v) for v in cfg.value_range)

    def finish(batch):
        return {
            "image": batch["image"] * ((hi - lo) / 255.0) + lo,
            "text": tokenizer.tf_tokenize(batch["caption"], cfg.max_len),
            "label": batch["label"],
            "data_counts": tf.reduce_max(batch["counts"], axis=0),
            positions.KEY: tf.reduce_max(batch[positions.KEY], axis=0),
        }

    return ds.map(finish, num_parallel_calls=tf.data.AUTOTUNE)


def counter_metrics(counts: np.ndarray) -> dict[str, int]:
    """{"data/seen": ..., "data/skipped/<reason>": ...} from [S, K] (or [K]) counts."""
    totals = np.asarray(counts).reshape(-1, _NUM_COUNTERS).sum(axis=0)
    return {key: int(v) for key, v in zip(records.COUNTER_KEYS, totals, strict=True)}


def source_captions(data_config: ml_collections.ConfigDict, limit: int):
    """Up to `limit` cleaned usable captions per source (for tokenizer training)."""
    for spec in parse_sources(data_config.sources):
        source = create_source(spec, data_config)
        units = source.units(0, 1)
        ds = source.read(units, tf.range(len(units), dtype=tf.int64), data_config.cycle_length)
        ds = ds.map(records.check_caption).filter(lambda r: tf.equal(r["reason"], records.OK))
        ds = ds.map(lambda r: preprocess.clean_captions(r["caption"], data_config.lowercase))
        # Unparseable records are skipped here; the training stream counts them.
        ds = ds.ignore_errors()
        for caption in ds.take(limit).as_numpy_iterator():
            yield caption.decode("utf-8")

