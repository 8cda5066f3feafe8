"""Exact dedup and SemDeDup on constructed data with known duplicate groups."""

from __future__ import annotations

import numpy as np

from contrastive_jax.curation.dedup import exact_keep, semdedup_cluster, semdedup_keep
from contrastive_jax.curation.kmeans import spherical_kmeans


def test_exact_keeps_smallest_uid_of_each_content_group():
    uids = ["c", "a", "b", "d", "e"]
    contents = [b"x", b"x", b"y", b"x", b"z"]
    assert exact_keep(uids, contents) == ["a", "b", "e"]
    assert exact_keep(uids[::-1], contents[::-1]) == ["a", "b", "e"]  # order-free


def unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def test_semdedup_cluster_rule_removes_later_near_duplicates():
    e0, e1 = np.array([1.0, 0.0, 0.0]), np.array([0.0, 1.0, 0.0])
    near0 = unit(e0 + [0.0, 0.05, 0.0])  # cos ~0.9988 to e0
    mid = unit(e0 + e1)  # cos 0.707 to both
    rows = np.stack([e0, near0, e1, mid, unit(near0 + [0, 0, 0.01])])
    # Row 4 is near row 1 (removed itself) and row 0: removed, as in SemDeDup's triu max.
    assert semdedup_cluster(rows, eps=0.01).tolist() == [True, False, True, True, False]
    assert semdedup_cluster(rows, eps=0.3).tolist() == [True, False, True, False, False]
    assert semdedup_cluster(rows[:1], eps=0.01).tolist() == [True]


def test_semdedup_finds_known_groups_and_ignores_order():
    rng = np.random.default_rng(0)
    centers = unit(rng.normal(size=(4, 32)))  # 4 well separated directions
    emb, uids, groups = [], [], {}
    for g, c in enumerate(centers):
        for j in range(5):  # 5 near-copies each (cos > 0.999) ...
            emb.append(unit(c + 0.005 * rng.normal(size=32)))
            uids.append(f"g{g}-{j}")
            groups[uids[-1]] = g
    for j in range(12):  # ... and 12 distinct items
        emb.append(unit(rng.normal(size=32)))
        uids.append(f"solo{j:02d}")
    emb = np.stack(emb)
    keep = semdedup_keep(uids, emb, eps=0.01, clusters=4, seed=0)
    assert [u for u in keep if u.startswith("solo")] == [f"solo{j:02d}" for j in range(12)]
    kept_groups = [groups[u] for u in keep if u in groups]
    assert sorted(kept_groups) == [0, 1, 2, 3]  # exactly one survivor per duplicate group
    perm = rng.permutation(len(uids))
    assert semdedup_keep([uids[i] for i in perm], emb[perm], eps=0.01, clusters=4,
                         seed=0) == keep  # rows are sorted by uid before clustering
    # Whatever the clustering, the kept set has no pair within eps.
    kept_emb = emb[[uids.index(u) for u in keep]]
    sim = kept_emb @ kept_emb.T - np.eye(len(keep)) * 2
    assert sim.max() <= 0.99


def test_spherical_kmeans_separates_clusters():
    rng = np.random.default_rng(1)
    centers = unit(rng.normal(size=(3, 8)))
    x = np.concatenate([unit(c + 0.05 * rng.normal(size=(20, 8))) for c in centers])
    _, assign = spherical_kmeans(x, 3, seed=0)
    for g in range(3):
        assert len(set(assign[g * 20:(g + 1) * 20])) == 1
    assert len(set(assign)) == 3
