"""Precomputed embeddings of a locked image tower (`train.embedding_cache`).

With the image tower (and its head) locked, its embedding of a training image never
changes, so LiT can compute it once per example and train the text tower on the cache: the
step then runs no image tower at all (train/step.py, `cached_image_embeddings`).

The cache holds the L2-normalised embeddings of every usable example of the training
sources, keyed by each example's `uid`, in `DIR/<sources>.npz` with a fingerprint of the
image params. The training stream stays the same stream of examples (same order, same
resume positions); only its finish step swaps each image for its cached embedding
(data/stream.py), so
resuming works exactly as without the cache. Data augmentation (`data.flip`) is refused:
a cached embedding is of one fixed view of the image.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import re

import jax
import ml_collections
import numpy as np
from jax.sharding import Mesh

from contrastive_jax import paths
from contrastive_jax.data.stream import uid_image_batches
from contrastive_jax.errors import ConfigError, DataError
from contrastive_jax.evaluate.embed import encode_images
from contrastive_jax.models.state import ModelDef, TrainState
from contrastive_jax.train.lock import TOWER_PATTERNS, is_locked, param_names

log = logging.getLogger(__name__)


def cache_file(config: ml_collections.ConfigDict, workdir: str) -> str:
    directory = config.train.embedding_cache.dir or paths.join(workdir, "embedding_cache")
    data = config.data
    if data.sources:  # a digest of the source list: another list is another cache
        name = "sources_" + hashlib.sha256(json.dumps(
            [dict(s) for s in data.sources], sort_keys=True, default=str).encode()).hexdigest()[:16]
    else:
        name = re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{data.dataset}_{data.train_split}")
    return paths.join(directory, f"{name}.npz")


def check_image_tower_locked(params: dict, lock: tuple[str, ...]) -> None:
    """The cache is only valid if every image-tower param (head included) is locked."""
    free = [n for n in param_names(params)
            if is_locked(n, TOWER_PATTERNS["image"]) and not is_locked(n, lock)]
    if free:
        raise ConfigError(f"config key 'train.embedding_cache.enabled' needs the whole image "
                         f"tower locked ('train.locked.image=True'); {free[0]!r} is trainable")


def fingerprint(params: dict) -> str:
    """sha256 of the image tower's params (names, shapes and bytes)."""
    digest = hashlib.sha256()
    image = {n: v for n, v in _flat_host(params).items() if is_locked(n, TOWER_PATTERNS["image"])}
    for name in sorted(image):
        value = np.ascontiguousarray(image[name])
        digest.update(f"{name}{value.shape}{value.dtype}".encode())
        digest.update(value.tobytes())
    return digest.hexdigest()


def _flat_host(params: dict) -> dict[str, np.ndarray]:
    from contrastive_jax.export.flat import flatten

    return flatten(jax.device_get(params))


def compute_embeddings(config: ml_collections.ConfigDict, model_def: ModelDef,
                       state: TrainState, mesh: Mesh,
                       batch_size: int = 1000) -> tuple[np.ndarray, np.ndarray]:
    """(uids [N], embeddings [N, D] float32) of every usable training image, in stored
    order."""
    uids, rows = [], []
    for batch in uid_image_batches(config.data, batch_size):
        n = len(batch["uid"])
        images = batch["image"]
        if n < batch_size:  # one compiled shape for every batch
            images = np.concatenate([images, np.zeros((batch_size - n, *images.shape[1:]),
                                                      images.dtype)])
        rows.append(encode_images(model_def, state, images, mesh)[:n])
        uids.append(np.array([u.decode("utf-8") for u in batch["uid"]]))
    uids = np.concatenate(uids)
    if len(np.unique(uids)) != len(uids) or (uids == "").any():
        raise DataError("the training data has empty or duplicate uids; an embedding cache "
                        "is keyed by uid and needs them unique")
    return uids, np.concatenate(rows).astype(np.float32)


def load_or_build(config: ml_collections.ConfigDict, workdir: str, model_def: ModelDef,
                  state: TrainState, mesh: Mesh) -> tuple[np.ndarray, np.ndarray]:
    """The cache of this run's image tower: read if its fingerprint matches, else built
    (every process computes it; process 0 writes it)."""
    path = cache_file(config, workdir)
    key = fingerprint(state.params)
    if paths.isfile(path):
        with np.load(io.BytesIO(paths.read_bytes(path)), allow_pickle=False) as f:
            if str(f["fingerprint"]) == key:
                log.info("embedding cache: read %s", path)
                return f["uid"], f["embedding"]
        log.warning("embedding cache %s is of other image params; rebuilding it", path)
    uids, embeddings = compute_embeddings(config, model_def, state, mesh)
    if jax.process_index() == 0:
        buffer = io.BytesIO()
        np.savez(buffer, uid=uids, embedding=embeddings, fingerprint=np.str_(key))
        paths.write_bytes(path, buffer.getvalue())  # all-or-nothing, local or gs://
        log.info("embedding cache: wrote %d embeddings to %s", len(uids), path)
    return uids, embeddings
