"""Fingerprints of arrays: a 64-bit hash of each leaf's bits, computed on device.

A checkpoint records the fingerprint of every array it saves and a restore recomputes them:
a flipped byte in an array file that the reader decodes without complaint (zstd keeps
incompressible floats as raw bytes) is caught here instead of training on garbage.

The hash of a leaf is the wrapping uint32 sum, over its elements, of a bijective mix of
(element bits, flat index), in two lanes with different seeds. A sum does not depend on
how the array is sharded or in which order XLA reduces, so the same values hash alike on
any mesh; and one changed element always changes the sum (the mix is a bijection).
"""

from __future__ import annotations

import functools
import hashlib
import json
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

_SEEDS = (0x9E3779B9, 0x7F4A7C15)


def leaf_name(path: tuple) -> str:
    """'params/img/encoder/...' for a key path (attribute, dict key or index)."""
    parts = []
    for key in path:
        for attr in ("name", "key", "idx"):
            if hasattr(key, attr):
                parts.append(str(getattr(key, attr)))
                break
        else:
            parts.append(str(key))
    return "/".join(parts)


def _mix(h: jax.Array) -> jax.Array:
    """murmur3's 32-bit finaliser: a bijection on uint32 that spreads every input bit."""
    h = h ^ (h >> 16)
    h = h * jnp.uint32(0x85EBCA6B)
    h = h ^ (h >> 13)
    h = h * jnp.uint32(0xC2B2AE35)
    return h ^ (h >> 16)


def _bits(x: jax.Array) -> jax.Array:
    """The leaf's elements as uint32 words, same shape (64-bit elements folded in two)."""
    if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
        x = jax.random.key_data(x)
    if x.dtype == jnp.bool_:
        return x.astype(jnp.uint32)
    size = jnp.dtype(x.dtype).itemsize
    if size == 8:
        words = jax.lax.bitcast_convert_type(x, jnp.uint32)  # [..., 2]
        return words[..., 0] ^ _mix(words[..., 1])
    unsigned = {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32}[size]
    return jax.lax.bitcast_convert_type(x, unsigned).astype(jnp.uint32)


def _leaf_hash(x: jax.Array) -> jax.Array:
    bits = _bits(x)
    # The flat index from iotas in the leaf's own shape: no reshape, which could regather
    # a sharded array.
    index = jnp.zeros(bits.shape, jnp.uint32)
    stride = 1
    for dim in reversed(range(bits.ndim)):
        index = index + jax.lax.broadcasted_iota(jnp.uint32, bits.shape, dim) * jnp.uint32(
            stride & 0xFFFFFFFF)
        stride *= bits.shape[dim]
    # Both lanes in one pass (a trailing axis of 2): half the ops to trace per leaf, which
    # is most of a save's host time for a model of many small leaves.
    seeds = jnp.asarray(_SEEDS, jnp.uint32)
    mixed = _mix(bits[..., None] ^ _mix(index[..., None] + seeds))
    return jnp.sum(mixed, axis=tuple(range(bits.ndim)), dtype=jnp.uint32)


@functools.lru_cache(maxsize=16)
def _jitted(out_sharding: NamedSharding | None):
    # One program per leaf signature (shape, dtype, sharding), not one per tree: jax's
    # caches (in memory, and the persistent compilation cache across processes) then serve
    # every model whose leaves share shapes, where a program over a whole tree was traced
    # and compiled anew for each new model (seconds on a CPU, at its first save).
    # Replicated out: every process of a multi-process run can read the result.
    return jax.jit(_leaf_hash, out_shardings=out_sharding)


def _replicated_like(leaves: list[Any]) -> NamedSharding | None:
    for leaf in leaves:
        sharding = getattr(leaf, "sharding", None)
        if isinstance(sharding, NamedSharding):
            return NamedSharding(sharding.mesh, PartitionSpec())
    return None


def spec(leaf: Any) -> str:
    """'float32:64x32': a leaf's dtype and shape, as fingerprints record them."""
    return f"{jnp.dtype(leaf.dtype).name}:{'x'.join(map(str, leaf.shape))}"


def fingerprints(tree: Any, prefix: str = "") -> dict[str, str]:
    """{leaf name: '<16 hex digits>:<spec>'} for every array leaf of `tree` (a host sync;
    every process calls it alike, since the hash of a sharded leaf is a collective)."""
    with_paths = jax.tree_util.tree_leaves_with_path(tree)
    names = [prefix + leaf_name(path) for path, _ in with_paths]
    leaves = [leaf for _, leaf in with_paths]
    hash_leaf = _jitted(_replicated_like(leaves))
    # Dispatched leaf after leaf (asynchronously), fetched together; every process hashes
    # the leaves in the same order, as the collectives of sharded ones need.
    words = np.asarray(jax.device_get([hash_leaf(leaf) for leaf in leaves]),
                       np.uint32).reshape(-1, 2)
    return {name: f"{int(a):08x}{int(b):08x}:{spec(leaf)}"
            for name, leaf, (a, b) in zip(names, leaves, words, strict=True)}


def mismatches(expected: dict[str, str], tree: Any, prefix: str = "") -> list[str]:
    """Names of `tree`'s leaves whose fingerprint differs from the one in `expected`
    (leaves `expected` does not list are not checked)."""
    got = fingerprints(tree, prefix)
    return [name for name, value in got.items()
            if name in expected and expected[name] != value]


def tree_difference(expected: dict[str, str], target: Any, prefix: str,
                    partial: bool) -> str | None:
    """How `target` (arrays or shape structs) differs in leaves, dtypes or shapes from
    the leaves under `prefix` that `expected` records; None if it does not (`partial`:
    `target` may lack some)."""
    ours = {prefix + leaf_name(path): spec(leaf)
            for path, leaf in jax.tree_util.tree_leaves_with_path(target)}
    theirs = {name: value.partition(":")[2] for name, value in expected.items()
              if name.startswith(prefix)}
    missing = sorted(set(ours) - set(theirs)) or ([] if partial else
                                                  sorted(set(theirs) - set(ours)))
    if missing:
        side = "this run has" if missing[0] in ours else "the checkpoint has"
        return f"{side} {missing[0].removeprefix(prefix)} and the other does not"
    for name, ours_spec in ours.items():
        if theirs[name] and theirs[name] != ours_spec:
            return (f"{name.removeprefix(prefix)} is {theirs[name]} in the checkpoint, "
                    f"{ours_spec} in this run")
    return None


def digest(record: dict[str, Any]) -> str:
    """A short hash of a JSON-able record (a checkpoint's metadata without its digest)."""
    text = json.dumps(record, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]
