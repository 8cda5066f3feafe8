"""Few-shot linear probe: closed-form L2-regularised least squares on frozen embeddings."""

from __future__ import annotations

import numpy as np


def fewshot_indices(labels: np.ndarray, shots: int, seed: int = 0) -> np.ndarray:
    """`shots` random example indices per class; ValueError if a class has fewer."""
    rng = np.random.default_rng(seed)
    picked = []
    for c in np.unique(labels):
        where = np.flatnonzero(labels == c)
        if len(where) < shots:
            raise ValueError(f"class {c} has {len(where)} examples, fewer than {shots} shots")
        picked.append(rng.choice(where, shots, replace=False))
    return np.sort(np.concatenate(picked))


def fit_probe(x: np.ndarray, labels: np.ndarray, num_classes: int,
              l2: float = 1e-3) -> np.ndarray:
    """W [D+1, C] minimising ||[x 1] W - Y||^2 + l2 ||W||^2 with targets Y in {-1, 1}.

    Solved in float64 through the D x D normal equations (or N x N when fewer examples than
    dimensions, as in few-shot), so it is exact and fast for the few-shot regime.
    """
    xb = np.concatenate([x, np.ones((len(x), 1))], axis=1).astype(np.float64)
    y = 2.0 * np.eye(num_classes)[labels] - 1.0
    n, d = xb.shape
    if n < d:  # dual form: W = X^T (X X^T + l2 I)^-1 Y
        return xb.T @ np.linalg.solve(xb @ xb.T + l2 * np.eye(n), y)
    return np.linalg.solve(xb.T @ xb + l2 * np.eye(d), xb.T @ y)


def probe_accuracy(w: np.ndarray, x: np.ndarray, labels: np.ndarray) -> float:
    xb = np.concatenate([x, np.ones((len(x), 1))], axis=1)
    return float(np.mean(np.argmax(xb @ w, axis=1) == labels))
