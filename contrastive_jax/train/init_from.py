"""Initialise towers of a fresh run from another model's params (`train.init_from`).

Sources, by what `path` is:
- a training workdir (has `config.json`) or its `checkpoints/` folder: the latest orbax
  checkpoint, restored with that run's own config (checkpoints/store.py: restore_params);
- an export directory (has `export_config.json`): its npz / safetensors weights;
- a `.npz` file: a big_vision two_towers checkpoint (names like `params/img/Transformer/...`,
  converted by export/big_vision.py) or this project's exported flat names;
- a `.safetensors` file of this project's flat names;
- `hf:DIR` (a transformers SiglipModel / CLIPModel) or `open_clip:DIR` (an open_clip
  local-dir model), converted by export/hf_import.py.

The selected tower's params are copied by name; every one must exist in the source with the
same shape, else a one-line error names it. Params matching `reinit` (and the projection
heads with `drop_heads`) keep their fresh initialisation.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import jax
import ml_collections
import numpy as np

from contrastive_jax import paths
from contrastive_jax.checkpoints.store import restore_params
from contrastive_jax.config import INIT_FROM_TOWERS
from contrastive_jax.errors import UserError
from contrastive_jax.export.flat import flatten
from contrastive_jax.parallel.sharding import path_name
from contrastive_jax.train.lock import TOWER_PATTERNS, param_names

TOWERS = INIT_FROM_TOWERS
_HEADS = {"image": r"^img_head/", "text": r"^txt_head/"}


class InitFromError(UserError, ValueError):
    """A source that cannot initialise this model; one line naming the path or param."""


def _tower_names(tower: str) -> tuple[str, ...]:
    return ("image", "text") if tower in ("both", "all") else (tower,)


def _is_big_vision(names: list[str]) -> bool:
    return any(n.startswith("params/") or "/Transformer/" in n or "/Encoder_0/" in n
               for n in names)


def load_source(path: str) -> dict[str, np.ndarray]:
    """Flat {'/'-joined name: array} params of any supported source (see module doc)."""
    from contrastive_jax.export import big_vision, hf_import, native

    if path.startswith((hf_import.HF_PREFIX, hf_import.OPEN_CLIP_PREFIX)):
        from contrastive_jax.config import default_config

        return flatten(hf_import.import_model(path, default_config())[0])
    if not paths.exists(path):
        raise InitFromError(f"config key 'train.init_from.path': {path} does not exist")
    if paths.isdir(path):
        parent = paths.dirname(paths.absolute(path))
        if paths.basename(paths.absolute(path)) == "checkpoints" and paths.isfile(
                paths.join(parent, "config.json")):
            path = parent
        if paths.isfile(paths.join(path, "config.json")):
            _, params, _ = restore_params(path)
            return flatten(params)
        if paths.isfile(paths.join(path, native.CONFIG_FILE)):
            return flatten(native.load_exported(path)[1])
        raise InitFromError(f"config key 'train.init_from.path': {path} is neither a workdir "
                            f"(config.json) nor an export directory ({native.CONFIG_FILE})")
    if not path.endswith((".npz", ".safetensors")):
        raise InitFromError(f"config key 'train.init_from.path': {path} is not a .npz or "
                            f".safetensors file")
    flat = native._read_weights(path)
    if path.endswith(".npz") and _is_big_vision(list(flat)):
        return flatten(big_vision.load_big_vision(path)[1])
    return flat


def _fold_rgb_patch_kernel(name: str, theirs: np.ndarray, shape: tuple) -> np.ndarray:
    """An RGB source's patch kernel [p, p, 3, w] for a grey model [p, p, 1, w]: summed over
    the channels, which is exact for grey images (an RGB model sees them replicated to RGB,
    sum_c w_c x = (sum_c w_c) x). Exports of grey models are RGB (hf_layers.rgb_patch_kernel),
    so this takes them back. Other shapes pass unchanged."""
    if (name.endswith("embedding/kernel") and theirs.ndim == 4 and len(shape) == 4
            and theirs.shape[2] == 3 and shape[2] == 1
            and theirs.shape[:2] + theirs.shape[3:] == tuple(shape[:2]) + tuple(shape[3:])):
        return theirs.sum(axis=2, keepdims=True)
    return theirs


def selected(name: str, init_config: ml_collections.ConfigDict) -> bool:
    """Whether param `name` is copied from the source (not re-initialised)."""
    towers = _tower_names(init_config.tower)
    if init_config.tower != "all":
        if not any(re.search(p, name) for t in towers for p in TOWER_PATTERNS[t]):
            return False
    keep_fresh = list(init_config.reinit)
    if init_config.drop_heads:
        keep_fresh += [_HEADS[t] for t in towers]
    return not any(re.search(p, name) for p in keep_fresh)


def init_params(params: Mapping[str, Any], init_config: ml_collections.ConfigDict,
                source: Mapping[str, np.ndarray] | None = None) -> tuple[dict[str, Any],
                                                                         list[str]]:
    """(params with the selected leaves copied from the source, names copied).

    `params`: fresh nested params, host or device arrays; a copied leaf takes the fresh
    leaf's dtype and, for a jax.Array, its sharding (each process places only its shards,
    so this works across hosts). `source`: flat params; default: read from the path.
    """
    names = param_names(params)
    if source is None:
        source = load_source(init_config.path)
    for p in init_config.reinit:
        if not any(re.search(p, n) for n in names):
            raise InitFromError(f"config key 'train.init_from.reinit': pattern {p!r} matches "
                                f"no parameter")
    copied = []

    def copy(path, leaf):
        name = path_name(path)
        if not selected(name, init_config):
            return leaf
        if name not in source:
            raise InitFromError(f"init_from {init_config.path}: source has no parameter "
                                f"{name!r}")
        theirs = _fold_rgb_patch_kernel(name, np.asarray(source[name]), leaf.shape)
        if theirs.shape != leaf.shape:
            raise InitFromError(f"init_from {init_config.path}: parameter {name!r} has shape "
                                f"{theirs.shape} in the source, {leaf.shape} in this model")
        theirs = theirs.astype(leaf.dtype)
        copied.append(name)
        if isinstance(leaf, jax.Array):
            return jax.make_array_from_callback(theirs.shape, leaf.sharding,
                                                lambda index: theirs[index])
        return theirs

    out = jax.tree_util.tree_map_with_path(copy, params)
    if not copied:
        raise InitFromError(f"init_from {init_config.path}: no parameter selected to copy "
                            f"(tower={init_config.tower!r})")
    return out, copied
