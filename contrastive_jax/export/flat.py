"""Nested param dicts <-> flat {"img/encoder/blocks/0/attn/query/kernel": array} maps."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

SEP = "/"


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, np.ndarray]:
    """Flattens nested dicts into '/'-joined names; leaves become host numpy arrays."""
    out: dict[str, np.ndarray] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if SEP in str(key):
            raise ValueError(f"parameter name {name!r} contains {SEP!r}")
        if isinstance(value, Mapping):
            out.update(flatten(value, name + SEP))
        else:
            out[name] = np.asarray(value)
    return out


def unflatten(flat: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """Inverse of `flatten`; all-digit keys become ints (nnx.List indices)."""
    tree: dict[Any, Any] = {}
    for name, value in flat.items():
        node = tree
        *parents, leaf = [int(p) if p.isdigit() else p for p in name.split(SEP)]
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return tree
