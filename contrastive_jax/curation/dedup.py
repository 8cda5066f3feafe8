"""Deduplication producing keep-lists: exact (pixel hash) and SemDeDup (Abbas et al. 2023).

SemDeDup, as in facebookresearch/SemDeDup: cluster unit embeddings with (spherical)
k-means; inside each cluster, order items by distance to the centroid, farthest first (its
default `which_to_keep="hard"`); item j is removed if its cosine to ANY earlier item i < j
exceeds 1 - eps (the max over the strict upper triangle of the similarity matrix, so the
comparison includes earlier items that were removed themselves). Ties in the order are
broken by uid, so the result does not depend on the stored order.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence

import numpy as np

from contrastive_jax.curation.kmeans import spherical_kmeans
from contrastive_jax.errors import ConfigError


def exact_keep(uids: Sequence[str], contents: Iterable[bytes]) -> list[str]:
    """Uids to keep: of each group with identical content (sha1), the smallest uid."""
    best: dict[bytes, str] = {}
    for uid, content in zip(uids, contents, strict=True):
        digest = hashlib.sha1(content).digest()
        if digest not in best or uid < best[digest]:
            best[digest] = uid
    return sorted(best.values())


def semdedup_cluster(emb: np.ndarray, eps: float) -> np.ndarray:
    """Keep mask for the rows of one cluster, already in SemDeDup's order (unit rows)."""
    sim = emb @ emb.T
    upper = np.triu(sim, k=1)  # sim[i, j] for i < j only
    most_similar_earlier = upper.max(axis=0) if len(emb) > 1 else np.zeros(len(emb))
    return most_similar_earlier <= 1.0 - eps


def semdedup_keep(uids: Sequence[str], emb: np.ndarray, eps: float, clusters: int,
                  seed: int = 0, iters: int = 20) -> list[str]:
    """Uids SemDeDup keeps from embeddings `emb` [N, D] (normalized here)."""
    if not 0 < eps < 2:
        raise ConfigError(f"SemDeDup eps must be in (0, 2), got {eps}")
    # Sorted by uid first: k-means' start, and so the result, must not depend on row order.
    by_uid = np.argsort(np.asarray(list(uids)), kind="stable")
    uids = np.asarray(list(uids))[by_uid]
    emb = np.asarray(emb, np.float32)[by_uid]
    emb = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
    centroids, assign = spherical_kmeans(emb, clusters, iters=iters, seed=seed)
    keep = []
    for c in range(len(centroids)):
        members = np.flatnonzero(assign == c)
        if not len(members):
            continue
        distance = 1.0 - emb[members] @ centroids[c]
        # Farthest first; lexsort's last key is the primary one.
        order = members[np.lexsort((uids[members], -distance))]
        keep.extend(uids[order][semdedup_cluster(emb[order], eps)].tolist())
    return sorted(keep)
