"""Image-text retrieval recall@K, computed in chunks of queries (memory O(chunk x N))."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def positive_ranks(queries: np.ndarray, keys: np.ndarray, chunk: int = 1024) -> np.ndarray:
    """Rank of key i among all keys for query i (0 = best); pairs are (queries[i], keys[i]).

    Ties count against the query (a key scoring equal to the positive ranks above it), so
    degenerate embeddings cannot score a perfect recall.
    """
    if queries.shape != keys.shape:
        raise ValueError(f"need paired embeddings of equal shape, got {queries.shape} and "
                         f"{keys.shape}")
    ranks = np.empty(len(queries), np.int64)
    for start in range(0, len(queries), chunk):
        q = queries[start:start + chunk]
        sims = q @ keys.T  # [chunk, N]
        rows = np.arange(len(q))
        positive = sims[rows, start + rows]
        ranks[start:start + len(q)] = np.sum(sims >= positive[:, None], axis=1) - 1
    return ranks


def retrieval_recalls(zimg: np.ndarray, ztxt: np.ndarray, ks: Sequence[int] = (1, 5, 10),
                      chunk: int = 1024) -> dict[str, float]:
    """{i2t_r1, ..., t2i_r10}: fraction of pairs whose partner is in the top K."""
    out = {}
    for name, q, k in (("i2t", zimg, ztxt), ("t2i", ztxt, zimg)):
        ranks = positive_ranks(q, k, chunk)
        for K in ks:
            out[f"{name}_r{K}"] = float(np.mean(ranks < K))
    return out
