"""Spherical k-means (cosine) in numpy: deterministic for a seed, enough for SemDeDup."""

from __future__ import annotations

import numpy as np

from contrastive_jax.errors import ConfigError


def _normalize(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def spherical_kmeans(x: np.ndarray, k: int, iters: int = 20,
                     seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(centroids [k, D] unit, assignment [N]) of unit rows `x` (k-means++ start, Lloyd steps).

    A cluster that empties keeps its previous centroid.
    """
    x = _normalize(np.asarray(x, np.float32))
    n = len(x)
    if not 1 <= k <= n:
        raise ConfigError(f"k-means needs 1 <= clusters <= examples, got {k} and {n}")
    rng = np.random.default_rng(seed)
    centroids = [x[rng.integers(n)]]
    dist = 1.0 - x @ centroids[0]
    for _ in range(1, k):
        p = np.maximum(dist, 0.0) ** 2
        i = rng.choice(n, p=p / p.sum()) if p.sum() > 0 else rng.integers(n)
        centroids.append(x[i])
        dist = np.minimum(dist, 1.0 - x @ x[i])
    centroids = np.stack(centroids)
    assign = np.argmax(x @ centroids.T, axis=1)
    for _ in range(iters):
        sums = np.zeros_like(centroids)
        np.add.at(sums, assign, x)
        filled = np.bincount(assign, minlength=k) > 0
        centroids = np.where(filled[:, None], _normalize(sums), centroids)
        new = np.argmax(x @ centroids.T, axis=1)
        if np.array_equal(new, assign):
            break
        assign = new
    return centroids, assign
