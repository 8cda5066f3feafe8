"""Converts encoder params between the per-layer and the stacked (`scan_layers`) layouts.

Per-layer: `.../encoder/blocks/{i}/<leaf path>` with the block's own shapes.
Stacked:   `.../encoder/blocks/<leaf path>` with a leading depth axis.
Both work on nested param dicts (e.g. `TrainState.params`), numpy or jax arrays.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np


def _is_layer_key(key: Any) -> bool:
    return isinstance(key, int) or (isinstance(key, str) and key.isdigit())


def is_stacked(blocks: dict) -> bool:
    """Whether an encoder's `blocks` dict is in the stacked layout (no per-layer keys)."""
    return bool(blocks) and not any(_is_layer_key(k) for k in blocks)


def _map_blocks(tree: Any, fn) -> Any:
    if not isinstance(tree, dict):
        return tree
    out = {}
    for key, value in tree.items():
        if key == "blocks" and isinstance(value, dict):
            out[key] = fn(value)
        else:
            out[key] = _map_blocks(value, fn)
    return out


def _stack(blocks: dict) -> dict:
    if is_stacked(blocks):
        return blocks
    layers = [blocks[k] for k in sorted(blocks, key=int)]
    return jax.tree.map(lambda *xs: np.stack([np.asarray(x) for x in xs]), *layers)


def _unstack(blocks: dict) -> dict:
    if not is_stacked(blocks):
        return blocks
    depth = jax.tree.leaves(blocks)[0].shape[0]
    return {i: jax.tree.map(lambda x, i=i: np.asarray(x)[i], blocks) for i in range(depth)}


def stack_layers(params: dict) -> dict:
    """Per-layer encoder blocks -> stacked (host numpy); other params pass through."""
    return _map_blocks(params, _stack)


def unstack_layers(params: dict) -> dict:
    """Stacked encoder blocks -> per-layer (host numpy, int keys); others pass through."""
    return _map_blocks(params, _unstack)
