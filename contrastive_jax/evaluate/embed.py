"""Embedding host arrays on the mesh, padded so any count splits over the devices."""

from __future__ import annotations

import functools

import jax
import numpy as np
from jax.sharding import Mesh

from contrastive_jax.models.naflex import NaFlexImages
from contrastive_jax.models.state import ModelDef, TrainState
from contrastive_jax.parallel.mesh import BATCH_AXES, process_rows, replicated, to_global


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


def batch_images(batch: dict[str, np.ndarray]) -> np.ndarray | NaFlexImages:
    """The model input of a `LabelledImages` batch: its square "image"s, or its NaFlex
    patch sequences (a padding row gets a 1 x 1 grid: its position weights stay finite)."""
    if "patches" not in batch:
        return batch["image"]
    return NaFlexImages(batch["patches"], batch["patch_mask"], np.maximum(batch["shape"], 1))


def rows_on_mesh(tree, mesh: Mesh):
    """A pytree of arrays whose rows every process holds -> global arrays on the mesh, each
    padded with zero rows so it splits over the devices; each process gives its slice."""
    multiple = num_batch_shards(mesh) * jax.process_count()
    leaves, treedef = jax.tree.flatten(tree)
    local = {str(i): process_rows(pad_rows(np.asarray(x), multiple))
             for i, x in enumerate(leaves)}
    arrays = to_global(local, mesh)
    return jax.tree.unflatten(treedef, [arrays[str(i)] for i in range(len(leaves))])


def _embed(method: str, model_def: ModelDef, state: TrainState, rows, mesh: Mesh
           ) -> np.ndarray:
    # Every process passes the same rows; each contributes its slice of the padded array.
    n = len(jax.tree.leaves(rows)[0])
    out = _embed_fn(method, model_def, mesh)(state.params, state.rest, rows_on_mesh(rows, mesh))
    return np.asarray(jax.device_get(out))[:n]


def encode_texts(model_def: ModelDef, state: TrainState, tokens: np.ndarray,
                 mesh: Mesh) -> np.ndarray:
    """[N, L] token ids -> [N, D] unit embeddings on the host."""
    return _embed("encode_text", model_def, state, tokens, mesh)


def encode_images(model_def: ModelDef, state: TrainState,
                  images: np.ndarray | NaFlexImages, mesh: Mesh) -> np.ndarray:
    """[N, H, W, C] images (or a NaFlex model's NaFlexImages of N rows) -> [N, D] unit
    embeddings on the host."""
    return _embed("encode_image", model_def, state, images, mesh)
