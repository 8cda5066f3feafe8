"""One source's examples for one logical stream: epochs, bad-record counts, filters, exact
resume.

Per source and logical stream, the stream is a fixed function of (config, seed, stream):
epoch e reads the stream's units (data/units.py: files[s::L], parts of files, table rows,
a TFDS split's even part) in an order shuffled with a seed from (seed, source, e),
`cycle_length` files interleaved in parallel (deterministically), through a shuffle buffer
seeded from (seed, source, e). Records then pass the caption check and a guarded decode;
bad ones are counted per reason and dropped; then `data.filters` run. Nothing here depends
on the batch size. The stream index may be a tensor: one traced function builds any
stream (data/stream.py).

Resume: a stream that has served p examples of a source starts at the position saved in
the checkpoint (data/positions.py: epoch e and r raw records of it read, skipped without
decoding them), or, without one, at epoch p // n plus p % n usable examples, n being the
stream's usable examples per epoch (counted only up to p + 1: a resume inside the first
epoch reads no further). Augmentation seeds come from (seed, stream, source, position).
"""

from __future__ import annotations

import logging

import ml_collections
import numpy as np
import tensorflow as tf

from contrastive_jax.data import augment, positions, records
from contrastive_jax.data.filters import FilterCounters, filter_steps, filters_active
from contrastive_jax.data.filters.counters import Predicate
from contrastive_jax.data.sources import Source
from contrastive_jax.errors import DataError

log = logging.getLogger(__name__)

NUM_COUNTERS = len(records.COUNTER_KEYS)


def curation(cfg: ml_collections.ConfigDict, source: Source,
             counters: FilterCounters | None = None) -> list[Predicate]:
    """`data.filters` for the decoded examples ("image" uint8, "caption", "uid", ...) of
    `source`, prepared (apply_filters.filter_steps).

    The filters run in the resume counting pass too (without `counters`), so resume stays
    exact. MetaCLIP counts its entries over the whole source (all streams' parts), so
    every stream balances with the same counts.
    """
    if not filters_active(cfg.filters):
        return []
    pool = usable(read_all(source, cfg.cycle_length), cfg)
    # MetaCLIP's default entries are a TFDS dataset's class names: only a tfds source has them.
    return filter_steps(cfg.filters, pool, counters=counters,
                        dataset=source.class_names_dataset, data_dir=cfg.data_dir)


def read_all(source: Source, cycle_length: int, units: dict[str, tf.Tensor] | None = None
             ) -> tf.data.Dataset:
    """The records of `units` (default: all of the source's) in stored order."""
    units = source.whole() if units is None else units
    n = tf.size(units[source.unit_names[0]], out_type=tf.int64)
    return source.read(units, tf.range(n), cycle_length)


def _check_and_decode(channels: int, positioned: bool):
    """One map per record (each tf.data map costs per element): the caption check, the
    stream position merged in (`epoch_records` zips it beside the record), the decode."""

    def fn(index, element):
        record, position = element if positioned else (element, None)
        record = records.check_caption(record)
        if positioned:
            record = {**record, positions.KEY: position}
        if "image" in record:  # stored decoded (a TFDS tensor feature): nothing to decode
            return index, record
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
    counts = counts + tf.one_hot(ex["reason"], NUM_COUNTERS, dtype=tf.int64)
    counts = counts + (index - previous - 1) * tf.one_hot(records.UNDECODABLE, NUM_COUNTERS,
                                                          dtype=tf.int64)  # fmt: skip
    return (index, counts), {**ex, "counts": counts}


def usable(ds: tf.data.Dataset, data_config: ml_collections.ConfigDict,
           filters: list[Predicate] = ()) -> tf.data.Dataset:
    """Canonical records -> decoded usable examples with cumulative "counts" [K]; records
    zipped with their stream position (as `epoch_records` yields them) keep it as KEY.

    `filters` (a source's `curation`) apply too.
    """
    positioned = isinstance(ds.element_spec, tuple)  # (record, position): epoch_records
    if _stored_decoded(ds):
        ds = _usable_in_blocks(ds, positioned)
    else:
        ds = ds.enumerate().map(_check_and_decode(data_config.channels, positioned),
                                num_parallel_calls=tf.data.AUTOTUNE)  # fmt: skip
        # A decode error drops the element here; the gap in indices counts it in _count.
        ds = ds.ignore_errors()
        init = (tf.constant(-1, tf.int64), tf.zeros([NUM_COUNTERS], tf.int64))
        ds = ds.scan(init, _count)
        ds = ds.filter(lambda ex: tf.equal(ex["reason"], records.OK))
    for predicate in filters:
        ds = ds.filter(predicate)
    return ds


_BLOCK = 256  # records checked and counted together when nothing needs decoding


def _stored_decoded(ds: tf.data.Dataset) -> bool:
    """Records that carry a decoded image of a fixed shape (a TFDS tensor feature)."""
    spec = ds.element_spec[0] if isinstance(ds.element_spec, tuple) else ds.element_spec
    return "image" in spec and all(v.shape.is_fully_defined() for v in spec.values())


def _usable_in_blocks(ds: tf.data.Dataset, positioned: bool) -> tf.data.Dataset:
    """The per-record path's result (same examples, same cumulative counts) for records
    with nothing to decode, computed a block of records at a time: a tf.data function per
    record costs more than the checks themselves."""

    def check(*element):
        record = records.check_caption(element[0])
        return {**record, positions.KEY: element[1]} if positioned else record

    def count(previous, block):
        counts = previous + tf.cumsum(tf.one_hot(block["reason"], NUM_COUNTERS,
                                                 dtype=tf.int64), axis=0)  # fmt: skip
        return counts[-1], {**block, "counts": counts}

    def keep_usable(block):
        ok = tf.equal(block["reason"], records.OK)
        return {k: tf.boolean_mask(v, ok) for k, v in block.items()}

    ds = ds.batch(_BLOCK).map(check, num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.scan(tf.zeros([NUM_COUNTERS], tf.int64), count)
    return ds.map(keep_usable, num_parallel_calls=tf.data.AUTOTUNE).unbatch()


def epoch_records(source: Source, units: dict[str, tf.Tensor], cfg: ml_collections.ConfigDict,
                  seed: int, k: int):
    """e -> the raw records of epoch e of `units`, each zipped with its stream position."""
    n = tf.size(units[source.unit_names[0]], out_type=tf.int64)

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


# (source name, (stream, streams), channels, filters) -> usable examples per epoch of it.
_COUNT_CACHE: dict[tuple, int] = {}


def usable_per_epoch(source: Source, cfg: ml_collections.ConfigDict, stream: tuple[int, int],
                     limit: int | None = None, filters: list[Predicate] = ()) -> int | None:
    """Usable examples in one epoch of logical stream `stream` = (s, L), or None if there
    are more than `limit`.

    Decodes up to `limit` + 1 images (all of the epoch without a limit); a full count is
    cached. A resume inside the first epoch thus never reads the rest of the data.
    """
    key = (source.identity, stream, cfg.channels, str(cfg.get("filters", "")))
    if key not in _COUNT_CACHE:
        units = source.unit_table(stream[1]).of(stream[0])
        ds = usable(read_all(source, cfg.cycle_length, units), cfg, filters)
        if limit is not None:
            ds = ds.take(limit + 1)
        n = int(ds.reduce(np.int64(0), lambda acc, _: acc + 1))
        if limit is not None and n > limit:
            return None
        _COUNT_CACHE[key] = n
    return _COUNT_CACHE[key]


def _augment(cfg: ml_collections.ConfigDict, seed: int, stream_id: tf.Tensor, k: int,
             num_sources: int, keep_images: bool):
    aug = cfg.augment

    def fn(position, ex):
        example_seed = tf.stack([seed * 4099 + tf.cast(stream_id, tf.int64), position])
        out = {"label": ex["label"], "uid": ex["uid"]}
        if keep_images:
            out["image"] = _augment_image(ex["image"], cfg, example_seed)
        # Stripping and lowercasing commute with the word ops: done per batch in the finish.
        caption = ex["caption"]
        if aug.word_deletion > 0:
            caption = augment.random_word_deletion(caption, example_seed, aug.word_deletion)
        if aug.word_swaps > 0:
            caption = augment.random_word_swap(caption, example_seed, aug.word_swaps)
        mine = tf.one_hot(k, num_sources, dtype=tf.int64)
        return {**out, "caption": caption,
                "counts": mine[:, None] * ex["counts"][None, :],
                positions.KEY: mine * ex[positions.KEY]}

    return fn


def _augment_image(image: tf.Tensor, cfg: ml_collections.ConfigDict,
                   example_seed: tf.Tensor) -> tf.Tensor:
    """uint8 [H, W, C] -> float32 [S, S, C] in [0, 255], augmented; with NaFlex
    (`data.naflex.budgets`) uint8 [h, w, C] at its own size, patchified later
    (data/naflex_stream.py)."""
    aug = cfg.augment
    size = cfg.image_size
    naflex = bool(cfg.get("naflex") and cfg.naflex.budgets)
    if aug.inception_crop:
        image = augment.inception_crop(image, example_seed, aug.crop_area, aug.crop_aspect)
    if naflex:  # no square resize: NaFlex resizes each image to its budget, aspect kept
        image = tf.cast(image, tf.float32)
    elif aug.inception_crop or tuple(image.shape[:2]) != (size, size):
        image = augment.resize(image, size)
    else:  # stored at the model's size (a TFDS tensor feature): no resampling
        image = tf.cast(image, tf.float32)
    if cfg.flip:
        image = augment.flip(image, example_seed)
    if aug.color_jitter > 0:
        image = augment.color_jitter(image, example_seed, aug.color_jitter)
    if aug.grayscale > 0:
        image = augment.random_grayscale(image, example_seed, aug.grayscale)
    if naflex:  # naflex_patches resizes uint8 pixels, as Pillow does
        image = tf.cast(tf.round(tf.clip_by_value(image, 0.0, 255.0)), tf.uint8)
    return image


def resume_points(source: Source, cfg: ml_collections.ConfigDict, *, streams: int,
                  mine: range, starts: list[int], saved: list[tuple[int, int]] | None,
                  filters: list[Predicate]) -> tuple[list[int], list[int], bool]:
    """Where each of the streams `mine` (of `streams`) starts reading this source, having
    served `starts` examples of it: ([first epoch], [skip], whether skip counts raw records
    (from the checkpoint's `saved` positions) or usable examples (counted))."""
    if any(starts) and saved:
        log.info("%s: resuming %d streams at their saved positions (e.g. epoch %d + %d raw "
                 "records)", source.name, len(mine), *saved[0])
        return [e for e, _ in saved], [r for _, r in saved], True
    fresh = range(mine.start, mine.start) if any(starts) else mine
    _check_not_empty(source, cfg, streams, fresh, filters)
    epochs, skips = [], []
    for s, start in zip(mine, starts, strict=True):
        if not start:
            epochs.append(0)
            skips.append(0)
            continue
        # A resume without saved positions: counts the stream's epoch.
        n = usable_per_epoch(source, cfg, (s, streams), limit=start, filters=filters)
        if n == 0:
            raise DataError(f"{source.name}: no usable example for logical stream {s} of "
                            f"{streams}")
        # n None: the first epoch has more than `start` usable examples; resume inside it.
        e, skip = (0, start) if n is None else divmod(start, n)
        epochs.append(e)
        skips.append(skip)
        log.info("%s stream %d: resuming at epoch %d + %d examples (%s usable per epoch)",
                 source.name, s, e, skip, n or f"more than {start}")  # fmt: skip
    return epochs, skips, False


def _check_not_empty(source: Source, cfg: ml_collections.ConfigDict, streams: int,
                     mine: range, filters: list[Predicate]) -> None:
    """DataError unless each of the streams `mine` has a usable example (else the epoch
    loop would spin forever). Reads each in stored order, without the shuffle buffer, up
    to its first usable example; one traced function for all of them, run in parallel."""
    table = source.unit_table(streams)
    if not mine:
        return

    def first(s):
        found = usable(read_all(source, 1, table.of(s)), cfg, filters).take(1)
        return found.map(lambda _: s)

    # In parallel: each stream opens its own files (the order of the answers is moot).
    served = tf.data.Dataset.range(mine.start, mine.stop).interleave(
        first, cycle_length=len(mine), num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=False)
    missing = sorted(set(mine) - {int(s) for s in served.as_numpy_iterator()})
    if missing:
        raise DataError(f"{source.name}: no usable example for logical stream {missing[0]} "
                        f"of {streams} (its units are missing or bad; fewer streams, "
                        f"'data.logical_streams', share them out wider)")


def source_stream(source: Source, cfg: ml_collections.ConfigDict, *, k: int,
                  num_sources: int, seed: int, stream: tf.Tensor, streams: int,
                  start: tf.Tensor, first_epoch: tf.Tensor, skip: tf.Tensor, raw_skip: bool,
                  filters: list[Predicate] = (), keep_images: bool = True) -> tf.data.Dataset:
    """Infinite augmented examples of one source for logical stream `stream` (an int64
    tensor) of `streams`, from its `start`-th, which is record `skip` (raw records if
    `raw_skip`, else usable examples) of epoch `first_epoch` (`resume_points`).
    `filters`: the source's `curation`. `keep_images=False` drops the images after the
    checks (embedding-cache runs)."""
    units = source.unit_table(streams).of(stream)
    epoch = epoch_records(source, units, cfg, seed, k)
    ds = tf.data.Dataset.range(first_epoch, np.iinfo(np.int64).max).flat_map(epoch)
    if raw_skip:  # skipped before anything is decoded
        ds = usable(ds.skip(skip), cfg, filters)
    else:
        ds = usable(ds, cfg, filters).skip(skip)
    ds = ds.enumerate(start=start)
    stream_id = stream * num_sources + k
    return ds.map(_augment(cfg, seed, stream_id, k, num_sources, keep_images),
                  num_parallel_calls=tf.data.AUTOTUNE)  # fmt: skip
