"""Per-uid files the pipeline applies: CLIP-score files (.npz) and keep-lists (.txt).

Score file: a .npz with `uids` (str [N]) and `scores` (float32 [N], image-caption cosine).
Keep-list: a text file with one uid per line (written by `data dedup`).
Both are looked up in-graph with a tf.lookup.StaticHashTable keyed by the example's uid.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence

import numpy as np
import tensorflow as tf

from contrastive_jax import paths
from contrastive_jax.data.filters.counters import Predicate
from contrastive_jax.errors import ConfigError, DataError, InputNotFoundError


def write_scores(path: str, uids: Sequence[str], scores: np.ndarray) -> None:
    """Writes a score file; uids must be unique."""
    uids = np.asarray(list(uids), dtype=str)
    scores = np.asarray(scores, np.float32)
    if len(uids) != len(scores):
        raise DataError(f"{len(uids)} uids but {len(scores)} scores")
    if len(np.unique(uids)) != len(uids):
        raise DataError("score file uids must be unique (the dataset has repeated uids)")
    data = io.BytesIO()  # a file object: np.savez would append ".npz" to a name
    np.savez(data, uids=uids, scores=scores)
    paths.write_bytes(path, data.getvalue())


def read_scores(path: str) -> tuple[np.ndarray, np.ndarray]:
    """(uids str [N], scores float32 [N]) from a score file."""
    if not paths.isfile(path):
        raise InputNotFoundError(f"score file not found: {path} (write it with "
                                "`contrastive-jax data score`)")
    with np.load(io.BytesIO(paths.read_bytes(path))) as data:
        if "uids" not in data or "scores" not in data:
            raise DataError(f"{path} is not a score file (needs arrays 'uids' and 'scores')")
        return data["uids"].astype(str), data["scores"].astype(np.float32)


def score_threshold(scores: np.ndarray, threshold: float | None,
                    top_fraction: float | None) -> float:
    """The cut: `threshold` itself, or the score of the last example in the top fraction.

    Exactly one of the two must be set. With `top_fraction` f, the kept set is every score
    >= the ceil(f * N)-th largest score (ties at the cut are all kept).
    """
    if (threshold is None) == (top_fraction is None):
        raise ConfigError("config group 'data.filters.score' needs exactly one of 'threshold' "
                         "and 'top_fraction'")
    if threshold is not None:
        return float(threshold)
    if not 0 < top_fraction <= 1:
        raise ConfigError(f"config key 'data.filters.score.top_fraction' must be in (0, 1], "
                         f"got {top_fraction}")
    if not len(scores):
        raise DataError("score file is empty")
    k = math.ceil(top_fraction * len(scores))
    return float(np.sort(scores)[::-1][k - 1])


def score_predicate(uids: np.ndarray, scores: np.ndarray, cut: float) -> Predicate:
    """Keeps examples whose uid has a score >= cut; a uid missing from the file is dropped."""
    table = tf.lookup.StaticHashTable(
        tf.lookup.KeyValueTensorInitializer(tf.constant(uids), tf.constant(scores)),
        default_value=float("-inf"))

    def predicate(ex: dict[str, tf.Tensor]) -> tf.Tensor:
        return table.lookup(ex["uid"]) >= cut

    return predicate


def write_keep_list(path: str, uids: Sequence[str]) -> None:
    paths.write_text(path, "".join(f"{uid}\n" for uid in uids))


def read_keep_list(path: str) -> list[str]:
    if not paths.isfile(path):
        raise InputNotFoundError(f"keep-list not found: {path} (write it with "
                                "`contrastive-jax data dedup`)")
    with paths.open_file(path, "r", encoding="utf-8") as f:
        return [line.rstrip("\n") for line in f if line.rstrip("\n")]


def keep_list_predicate(uids: Sequence[str]) -> Predicate:
    """Keeps examples whose uid is in `uids`."""
    table = tf.lookup.StaticHashTable(
        tf.lookup.KeyValueTensorInitializer(tf.constant(list(uids), tf.string),
                                            tf.ones([len(uids)], tf.int32)),
        default_value=0)

    def predicate(ex: dict[str, tf.Tensor]) -> tf.Tensor:
        return table.lookup(ex["uid"]) > 0

    return predicate
