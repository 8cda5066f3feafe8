"""Embedding host arrays on the mesh, padded so any count splits over the devices."""

from __future__ import annotations

import functools

import jax
import numpy as np
from jax.sharding import Mesh

from contrastive_jax.models.state import ModelDef, TrainState
from contrastive_jax.parallel.mesh import BATCH_AXES, replicated, to_global


def num_batch_shards(mesh: Mesh) -> int:
    return int(np.prod([mesh.shape[a] for a in BATCH_AXES]))


def pad_rows(array: np.ndarray, multiple: int) -> np.ndarray:
    extra = -len(array) % multiple
    if not extra:
        return array
    return np.concatenate([array, np.zeros((extra, *array.shape[1:]), array.dtype)])


@functools.lru_cache(maxsize=16)
def _embed_fn(method: str, model_def: ModelDef, mesh: Mesh):
    # Cached so periodic evals reuse one compiled function per (model, method, mesh).
    return jax.jit(lambda p, r, x: getattr(model_def.bind(p, r), method)(x),
                   out_shardings=replicated(mesh))


def _embed(method: str, model_def: ModelDef, state: TrainState, rows: np.ndarray,
           mesh: Mesh) -> np.ndarray:
    # Every process passes the same rows; each contributes its slice of the padded array.
    n = len(rows)
    padded = pad_rows(rows, num_batch_shards(mesh) * jax.process_count())
    local = np.split(padded, jax.process_count())[jax.process_index()]
    rows_on_mesh = to_global({"x": local}, mesh)["x"]
    out = _embed_fn(method, model_def, mesh)(state.params, state.rest, rows_on_mesh)
    return np.asarray(jax.device_get(out))[:n]


def encode_texts(model_def: ModelDef, state: TrainState, tokens: np.ndarray,
                 mesh: Mesh) -> np.ndarray:
    """[N, L] token ids -> [N, D] unit embeddings on the host."""
    return _embed("encode_text", model_def, state, tokens, mesh)


def encode_images(model_def: ModelDef, state: TrainState, images: np.ndarray,
                  mesh: Mesh) -> np.ndarray:
    """[N, H, W, C] images -> [N, D] unit embeddings on the host."""
    return _embed("encode_image", model_def, state, images, mesh)
