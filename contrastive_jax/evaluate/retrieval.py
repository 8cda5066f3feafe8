"""Image-text retrieval recall@K, computed in chunks of queries (memory O(chunk x N)).

Several captions per image follow the COCO protocol: image -> text is correct at K when ANY
of the image's captions is among the top K captions; text -> image when the caption's image
is among the top K images. Ties count against the query (a wrong key scoring equal to the
best right one ranks above it), so degenerate embeddings cannot score a perfect recall.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from contrastive_jax.errors import DataError


def _similarities(queries: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """[q, D] x [k, D] -> [q, k]; the only place a similarity block is formed."""
    return queries @ keys.T


def _check(zimg: np.ndarray, ztxt: np.ndarray, text_image: np.ndarray) -> None:
    if zimg.ndim != 2 or ztxt.ndim != 2 or zimg.shape[1] != ztxt.shape[1]:
        raise ValueError(f"need [N, D] image and [M, D] text embeddings, got {zimg.shape} "
                         f"and {ztxt.shape}")
    if text_image.shape != (len(ztxt),):
        raise ValueError(f"need one image index per caption: {text_image.shape} for "
                         f"{len(ztxt)} captions")
    if len(text_image) and (text_image.min() < 0 or text_image.max() >= len(zimg)):
        raise ValueError(f"caption image indices must lie in [0, {len(zimg)})")
    if np.any(np.bincount(text_image, minlength=len(zimg)) == 0):
        raise DataError("retrieval: every image needs at least one caption")


def text_to_image_ranks(ztxt: np.ndarray, zimg: np.ndarray, text_image: np.ndarray,
                        chunk: int = 1024) -> np.ndarray:
    """[M]: for caption j, how many images score at least as high as its own image, minus one
    (0 = its image is retrieved first)."""
    ranks = np.empty(len(ztxt), np.int64)
    for start in range(0, len(ztxt), chunk):
        sims = _similarities(ztxt[start:start + chunk], zimg)  # [chunk, N]
        rows = np.arange(len(sims))
        positive = sims[rows, text_image[start:start + len(sims)]]
        ranks[start:start + len(sims)] = np.sum(sims >= positive[:, None], axis=1) - 1
    return ranks


def image_to_text_ranks(zimg: np.ndarray, ztxt: np.ndarray, text_image: np.ndarray,
                        chunk: int = 1024) -> np.ndarray:
    """[N]: for image i, how many other images' captions score at least as high as the best
    of its own captions (0 = one of its captions is retrieved first)."""
    ranks = np.empty(len(zimg), np.int64)
    for start in range(0, len(zimg), chunk):
        sims = _similarities(zimg[start:start + chunk], ztxt)  # [chunk, M]
        own = text_image[None, :] == np.arange(start, start + len(sims))[:, None]
        best = np.max(np.where(own, sims, -np.inf), axis=1)
        ranks[start:start + len(sims)] = np.sum((sims >= best[:, None]) & ~own, axis=1)
    return ranks


def positive_ranks(queries: np.ndarray, keys: np.ndarray, chunk: int = 1024) -> np.ndarray:
    """Rank of key i among all keys for query i (0 = best); pairs are (queries[i], keys[i])."""
    if queries.shape != keys.shape:
        raise ValueError(f"need paired embeddings of equal shape, got {queries.shape} and "
                         f"{keys.shape}")
    return text_to_image_ranks(queries, keys, np.arange(len(queries)), chunk)


def retrieval_recalls(zimg: np.ndarray, ztxt: np.ndarray, ks: Sequence[int] = (1, 5, 10),
                      chunk: int = 1024,
                      text_image: np.ndarray | None = None) -> dict[str, float]:
    """{i2t_r1, ..., t2i_r10}. Without `text_image`, (zimg[i], ztxt[i]) are the pairs;
    with it, caption j belongs to image text_image[j] (several captions per image)."""
    if chunk < 1:
        raise ValueError(f"retrieval chunk must be >= 1, got {chunk}")
    if text_image is None:
        if zimg.shape != ztxt.shape:
            raise ValueError(f"need paired embeddings of equal shape, got {zimg.shape} and "
                             f"{ztxt.shape}")
        text_image = np.arange(len(zimg))
    text_image = np.asarray(text_image, np.int64)
    _check(zimg, ztxt, text_image)
    ranks = {"i2t": image_to_text_ranks(zimg, ztxt, text_image, chunk),
             "t2i": text_to_image_ranks(ztxt, zimg, text_image, chunk)}
    return {f"{d}_r{k}": float(np.mean(r < k)) for d, r in ranks.items() for k in ks}
