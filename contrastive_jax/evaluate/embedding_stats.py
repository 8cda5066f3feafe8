"""Alignment and uniformity of the embeddings (Wang & Isola, 2020)."""

from __future__ import annotations

import numpy as np


def alignment(zimg: np.ndarray, ztxt: np.ndarray, alpha: float = 2.0) -> float:
    """E ||f(x) - g(y)||^alpha over positive pairs; lower is better aligned."""
    return float(np.mean(np.linalg.norm(zimg - ztxt, axis=-1) ** alpha))


def uniformity(z: np.ndarray, t: float = 2.0) -> float:
    """log E_{i != j} exp(-t ||z_i - z_j||^2); lower is more uniform on the sphere."""
    sq_dists = np.maximum(2.0 - 2.0 * (z @ z.T), 0.0)  # unit vectors
    off_diagonal = ~np.eye(len(z), dtype=bool)
    values = -t * sq_dists[off_diagonal]
    peak = values.max()
    return float(peak + np.log(np.mean(np.exp(values - peak))))
