"""Composes the filters enabled in `data.filters` on a dataset of single examples.

Examples are {"image": uint8 [H,W,C], "caption": tf.string, "uid": tf.string, "label":
int32, ...}. Filters run in `order`; each one's kept/dropped counts go to `FilterCounters`.
Every decision is a function of the example alone (uid hashes for random ones), so a
filtered stream is as resumable as an unfiltered one.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import jax
import ml_collections
import tensorflow as tf

from contrastive_jax import paths
from contrastive_jax.data.filters import cat, metaclip, uid_tables
from contrastive_jax.data.filters.basic import basic_predicate
from contrastive_jax.data.filters.counters import FilterCounters, Predicate
from contrastive_jax.data.schema import FILTER_NAMES, filter_order
from contrastive_jax.errors import ConfigError

log = logging.getLogger(__name__)

def filters_active(cfg: ml_collections.ConfigDict | None) -> bool:
    return cfg is not None and any(cfg[name].enabled for name in FILTER_NAMES)


def _metaclip(cfg, pool: tf.data.Dataset, dataset: str | None,
              data_dir: str | None) -> Predicate:
    if cfg.entries_file:
        entries = metaclip.read_entries(cfg.entries_file)
    elif dataset:
        entries = metaclip.dataset_entries(dataset, data_dir)
    else:
        raise ConfigError("config key 'data.filters.metaclip.entries_file' is needed here")
    matcher = metaclip.EntryMatcher(entries, cfg.lowercase)
    if cfg.counts_path and paths.exists(cfg.counts_path):
        counts = metaclip.load_counts(cfg.counts_path, entries)
    else:
        # The pool is the whole dataset in every process, so all count alike; one writes.
        counts = metaclip.count_entries(metaclip.caption_strings(pool), matcher)
        log.info("MetaCLIP: counted %d entries over the pool", len(entries))
        if cfg.counts_path and jax.process_index() == 0:
            metaclip.save_counts(cfg.counts_path, entries, counts)
    return metaclip.metaclip_predicate(matcher, metaclip.keep_probabilities(counts, cfg.t))


def _predicate(name: str, cfg, pool: tf.data.Dataset, dataset, data_dir) -> Predicate:
    if name == "basic":
        return basic_predicate(cfg)
    if name == "dedup":
        if not cfg.keep_lists:
            raise ConfigError("config key 'data.filters.dedup.keep_lists' is empty")
        preds = [uid_tables.keep_list_predicate(uid_tables.read_keep_list(p))
                 for p in cfg.keep_lists]
        return lambda ex: tf.reduce_all(tf.stack([p(ex) for p in preds]))
    if name == "score":
        if not cfg.path:
            raise ConfigError("config key 'data.filters.score.path' is empty")
        uids, scores = uid_tables.read_scores(cfg.path)
        cut = uid_tables.score_threshold(scores, cfg.threshold, cfg.top_fraction)
        log.info("score filter: keeping scores >= %.4f from %s", cut, cfg.path)
        return uid_tables.score_predicate(uids, scores, cut)
    return _metaclip(cfg, pool, dataset, data_dir)


def _cat_code(cfg) -> Callable[[dict[str, tf.Tensor]], tf.Tensor]:
    """Example -> int32 CAT reason code (0: kept), decided on the host."""
    decide = cat.CatFilter(cfg)

    def code(ex: dict[str, tf.Tensor]) -> tf.Tensor:
        uid = ex.get("uid", tf.constant(b""))
        return tf.numpy_function(decide.reason_code, [ex["caption"], ex["image"], uid],
                                 tf.int32, stateful=False)

    return code


def filter_steps(
    filters_cfg: ml_collections.ConfigDict | None,
    pool: tf.data.Dataset,
    *,
    counters: FilterCounters | None = None,
    dataset: str | None = None,
    data_dir: str | None = None,
) -> list[Predicate]:
    """The enabled filters of `filters_cfg`, in `filters_cfg.order`, as predicates to
    `ds.filter` with, prepared now: their files read and MetaCLIP's counts taken over the
    finite `pool` as it reaches that filter (after the filters before it). Applying them
    adds graph ops only, so a tf.data function traced once can apply them.

    `counters` (optional) receives `filters/<name>/kept|dropped`. `dataset` / `data_dir`
    name the TFDS dataset whose class names are MetaCLIP's default entries.
    """
    if not filters_active(filters_cfg):
        return []
    steps: list[Predicate] = []
    uncounted = pool  # the pool as seen by each filter, without touching the counters
    for name in filter_order(filters_cfg):
        cfg = filters_cfg[name]
        if not cfg.enabled:
            continue
        if name == "cat":  # counted per reason too
            code = _cat_code(cfg)
            uncounted = uncounted.filter(lambda ex, code=code: tf.equal(code(ex), 0))
            steps.append(counters.counted_reasons(name, cat.REASONS, code) if counters
                         else lambda ex, code=code: tf.equal(code(ex), 0))
            continue
        predicate = _predicate(name, cfg, uncounted, dataset, data_dir)
        uncounted = uncounted.filter(predicate)
        steps.append(counters.counted(name, predicate) if counters else predicate)
    return steps


def apply_filters(
    ds: tf.data.Dataset,
    filters_cfg: ml_collections.ConfigDict | None,
    *,
    counters: FilterCounters | None = None,
    dataset: str | None = None,
    data_dir: str | None = None,
    pool: tf.data.Dataset | None = None,
) -> tf.data.Dataset:
    """`ds` with the enabled filters applied (`filter_steps`); the pool is `ds` unless
    given (`ds` must then be finite), e.g. when `ds` is infinite."""
    for predicate in filter_steps(filters_cfg, ds if pool is None else pool,
                                  counters=counters, dataset=dataset, data_dir=data_dir):
        ds = ds.filter(predicate)
    return ds
