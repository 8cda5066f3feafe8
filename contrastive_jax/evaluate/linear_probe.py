"""Few-shot linear probe: closed-form L2-regularised least squares on frozen embeddings.

The recipe is big_vision's `fewshot_lsr` evaluator: features whitened with the shot set's
mean and std, a constant feature of 100 appended as an almost unregularised bias, one-vs-all
targets in {-1, 1}, a fixed ridge strength (2^10 by default), and per seed one random
permutation of each class's examples whose first `shots` entries are the shots, so the 1-shot
set is inside the 5-shot set and so on.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from contrastive_jax.errors import DataError

BIAS_CONSTANT = 100.0
DEFAULT_L2_REG = 2.0**10


def class_permutations(labels: np.ndarray, num_classes: int, seed: int) -> list[np.ndarray]:
    """Per class c (in order), a random permutation of the indices with label c."""
    rng = np.random.default_rng(seed)
    return [rng.permutation(np.flatnonzero(labels == c)) for c in range(num_classes)]


def fewshot_indices(labels: np.ndarray, shots: int, num_classes: int,
                    seed: int = 0) -> np.ndarray:
    """`shots` indices per class, deterministic in `seed`; DataError if a class has fewer."""
    picked = []
    for c, order in enumerate(class_permutations(labels, num_classes, seed)):
        if len(order) < shots:
            raise DataError(f"class {c} has {len(order)} examples, fewer than {shots} shots")
        picked.append(order[:shots])
    return np.concatenate(picked)


class Probe(NamedTuple):
    mean: np.ndarray  # [D] whitening statistics of the training features
    std: np.ndarray  # [D]
    w: np.ndarray  # [D + 1, C], the last row multiplies the constant bias feature


def _features(probe_mean: np.ndarray, probe_std: np.ndarray, x: np.ndarray) -> np.ndarray:
    x = (np.asarray(x, np.float64) - probe_mean) / probe_std
    return np.concatenate([x, np.full((len(x), 1), BIAS_CONSTANT)], axis=1)


def fit_probe(x: np.ndarray, labels: np.ndarray, num_classes: int,
              l2: float = DEFAULT_L2_REG) -> Probe:
    """W minimising ||X W - Y||^2 + l2 ||W||^2 on whitened X with a bias column.

    Solved in float64 through the D x D normal equations, or the N x N dual form when there
    are fewer examples than dimensions (the few-shot case); both give the same W.
    """
    x = np.asarray(x, np.float64)
    mean, std = x.mean(axis=0), x.std(axis=0) + 1e-5
    xb = _features(mean, std, x)
    y = 2.0 * np.eye(num_classes)[labels] - 1.0
    n, d = xb.shape
    if n < d:  # dual form: W = X^T (X X^T + l2 I)^-1 Y
        w = xb.T @ np.linalg.solve(xb @ xb.T + l2 * np.eye(n), y)
    else:
        w = np.linalg.solve(xb.T @ xb + l2 * np.eye(d), xb.T @ y)
    return Probe(mean, std, w)


def probe_predict(probe: Probe, x: np.ndarray) -> np.ndarray:
    return np.argmax(_features(probe.mean, probe.std, x) @ probe.w, axis=1)


def probe_accuracy(probe: Probe, x: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean(probe_predict(probe, x) == labels))
