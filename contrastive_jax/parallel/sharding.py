"""Parameter sharding rules: regex rules (tensor parallel over `model`), then FSDP.

A parameter's path is its '/'-joined key path, e.g. `img/encoder/blocks/0/mlp/fc1/kernel`.
`mesh.rules` is a list of [regex, spec] pairs; the first regex that `re.search`es the path
gives a spec with one entry per dimension: an axis name, a list of axis names, or None.
Then, when the `fsdp` axis has more than one device, a parameter with at least
`mesh.fsdp_min_size` elements is split over `fsdp` along its largest dimension that no rule
split and that the axis size divides. Everything else is replicated.

Stacked encoder blocks (`model.scan_layers`: `.../blocks/mlp/fc1/kernel`, no layer index)
carry a leading depth axis: rules are matched against the per-layer shape and the depth axis
is never split, so every layer is sharded exactly as in the per-layer layout.

The same function shards the optimizer state: optax's mu/nu mirror the param tree, so their
leaves end in the same key path; scalars such as `count` have no such path and stay replicated.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from contrastive_jax.errors import ConfigError

SpecEntry = str | tuple[str, ...] | None
Rule = tuple[re.Pattern, tuple[SpecEntry, ...]]

# Megatron-style tensor parallelism over `model`. Flax NNX MultiHeadAttention kernels are
# query/key/value [in, heads, head_dim] and out [heads, head_dim, out]: split on heads, so
# each device computes whole heads. MLP fc1 [in, hidden] splits its output, fc2 [hidden, out]
# its input, so the hidden activations never need to be gathered between the two.
DEFAULT_RULES: list[list[Any]] = [
    [r"attn/(query|key|value)/kernel$", [None, "model", None]],
    [r"attn/(query|key|value)/bias$", ["model", None]],
    [r"attn/out/kernel$", ["model", None, None]],
    [r"mlp/fc1/kernel$", [None, "model"]],
    [r"mlp/fc1/bias$", ["model"]],
    [r"mlp/fc2/kernel$", ["model", None]],
]
# A stacked-blocks path: `blocks/` followed by a name rather than a layer index.
_STACKED = re.compile(r"(^|/)blocks/(?!\d+(/|$))")
# Below this many elements, all-gathering a parameter costs more latency than its memory saves.
DEFAULT_FSDP_MIN_SIZE = 2**14


def path_name(path: Sequence[Any]) -> str:
    """'/'-joined names of the trailing dict keys of a tree path (the parameter's own path)."""
    keys: list[str] = []
    for entry in reversed(path):
        if not isinstance(entry, jax.tree_util.DictKey):
            break  # e.g. `.mu` or a tuple index inside the optimizer state
        keys.append(str(entry.key))
    return "/".join(reversed(keys))


def _entry(value: Any) -> SpecEntry:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise ValueError(f"sharding spec entry {value!r} is not an axis name, a list of them, "
                     "or None")


def parse_rules(rules: Sequence[Sequence[Any]]) -> list[Rule]:
    """[[regex, spec], ...] from the config -> compiled rules; bad entries raise ValueError."""
    parsed = []
    for rule in rules:
        if len(rule) != 2:
            raise ValueError(f"sharding rule {rule!r} is not a [regex, spec] pair")
        pattern, spec = rule
        parsed.append((re.compile(pattern), tuple(_entry(v) for v in spec)))
    return parsed


def match_rule(name: str, rules: Sequence[Rule]) -> tuple[SpecEntry, ...] | None:
    """The spec of the first rule whose regex is found in `name`, or None."""
    for pattern, spec in rules:
        if pattern.search(name):
            return spec
    return None


def _axes(entry: SpecEntry) -> tuple[str, ...]:
    return () if entry is None else (entry,) if isinstance(entry, str) else entry


def _fit(spec: Sequence[SpecEntry], shape: Sequence[int],
         axis_sizes: Mapping[str, int]) -> list[SpecEntry]:
    """Drops size-1 axes, and axes whose product does not divide their dimension."""
    fitted: list[SpecEntry] = []
    for entry, dim in zip(spec, shape, strict=True):
        axes = tuple(a for a in _axes(entry) if axis_sizes[a] > 1)
        if dim % int(np.prod([axis_sizes[a] for a in axes])):
            axes = ()
        fitted.append(None if not axes else axes[0] if len(axes) == 1 else axes)
    return fitted


def fsdp_dim(shape: Sequence[int], spec: Sequence[SpecEntry], fsdp_size: int) -> int | None:
    """The largest dimension not split by `spec` that `fsdp_size` divides (first on ties)."""
    best = None
    for i, (dim, entry) in enumerate(zip(shape, spec, strict=True)):
        if entry is None and dim % fsdp_size == 0 and (best is None or dim > shape[best]):
            best = i
    return best


def param_spec(name: str, shape: Sequence[int], rules: Sequence[Rule],
               axis_sizes: Mapping[str, int], fsdp_min_size: int) -> PartitionSpec:
    """The PartitionSpec of one parameter: its rule (fitted to the mesh), then FSDP."""
    if _STACKED.search(name) and len(shape) >= 1:
        # Exactly the spec layer 0 of the per-layer layout gets, behind an unsplit depth axis.
        per_layer = _STACKED.sub(r"\1blocks/0/", name, count=1)
        inner = param_spec(per_layer, shape[1:], rules, axis_sizes, fsdp_min_size)
        return PartitionSpec(None, *inner)
    unknown_axes = set()
    spec = match_rule(name, rules)
    if spec is None:
        spec = (None,) * len(shape)
    elif len(spec) != len(shape):
        raise ConfigError(f"config key 'mesh.rules': sharding rule spec {spec} for {name!r} "
                          f"has {len(spec)} entries, but the parameter has shape {tuple(shape)}")
    for entry in spec:
        unknown_axes |= set(_axes(entry)) - set(axis_sizes)
    if unknown_axes:
        raise ConfigError(f"config key 'mesh.rules': sharding rule for {name!r} names unknown "
                          f"mesh axes {sorted(unknown_axes)}; known: {sorted(axis_sizes)}")
    fitted = _fit(spec, shape, axis_sizes)
    fsdp = axis_sizes.get("fsdp", 1)
    used = {a for entry in fitted for a in _axes(entry)}
    if fsdp > 1 and "fsdp" not in used and int(np.prod(shape)) >= fsdp_min_size:
        dim = fsdp_dim(shape, fitted, fsdp)
        if dim is not None:
            fitted[dim] = "fsdp"
    return PartitionSpec(*fitted)


def tree_shardings(abstract_tree: Any, mesh: Mesh, rules: Sequence[Sequence[Any]],
                   fsdp_min_size: int) -> Any:
    """NamedShardings for every leaf of a tree of params, optimizer state or train state."""
    parsed = parse_rules(rules)
    axis_sizes = dict(mesh.shape)

    def leaf_sharding(path, leaf) -> NamedSharding:
        spec = param_spec(path_name(path), leaf.shape, parsed, axis_sizes, fsdp_min_size)
        return NamedSharding(mesh, spec)

    return jax.tree_util.tree_map_with_path(leaf_sharding, abstract_tree)
