"""Loss registry: `create_loss(name, mesh=..., batch_axes=...)` -> a jit-able LossFn.

A LossFn takes GLOBAL arrays (sharded along `batch_axes` on `mesh`) and returns
`(loss, metrics)`. Sharded losses are wrapped in `jax.shard_map` here, so callers never
deal with shard-local code.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple, Protocol

import jax
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from contrastive_jax.losses import family, reference, sharded
from contrastive_jax.parallel.mesh import BATCH_AXES

Metrics = dict[str, jax.Array]


class LossFn(Protocol):
    """(zimg [B, D], ztxt [B, D], t, b, labels [B] | None) -> (scalar loss, metrics)."""

    def __call__(
        self,
        zimg: jax.Array,
        ztxt: jax.Array,
        t: jax.Array,
        b: jax.Array | None = None,
        labels: jax.Array | None = None,
    ) -> tuple[jax.Array, Metrics]: ...


class _Entry(NamedTuple):
    fn: Callable[..., tuple[jax.Array, Metrics]]
    sharded: bool  # True: shard-local, needs a mesh and an `axis_name` kwarg.
    kwargs: tuple[str, ...]  # Extra keyword arguments `create_loss` accepts.
    # Reference-only: refuses a mesh that splits the batch rather than gathering it.
    single_shard: bool = False


_REGISTRY: dict[str, _Entry] = {
    "softmax": _Entry(reference.softmax_loss, False, ()),
    "softmax_sharded": _Entry(sharded.softmax_loss_sharded, True, ()),
    "sigmoid": _Entry(reference.sigmoid_loss, False, ()),
    "sigmoid_chunked": _Entry(sharded.sigmoid_loss_ring, True, ("bidirectional",)),
    "hn_nce": _Entry(family.hn_nce_loss, False, ("alpha", "beta"), single_shard=True),
    "debiased_softmax": _Entry(family.debiased_softmax_loss, False, ("tau_plus",),
                               single_shard=True),
    "macl": _Entry(family.macl_loss, False, ("beta",), single_shard=True),
}
LOSS_NAMES: tuple[str, ...] = tuple(_REGISTRY)


def create_loss(
    name: str,
    *,
    mesh: Mesh | None = None,
    batch_axes: tuple[str, ...] = ("data",),
    **kwargs: Any,
) -> LossFn:
    """Builds the loss `name` (one of LOSS_NAMES) as a function of global arrays.

    Reference losses ignore `mesh` (XLA partitions them automatically). Sharded ones run
    their shard-local form in `shard_map` over `batch_axes`; B must be divisible by
    the product of those axes' sizes.
    """
    if name not in _REGISTRY:
        raise ValueError(f"Unknown loss {name!r}; known losses: {', '.join(LOSS_NAMES)}")
    entry = _REGISTRY[name]
    unknown = sorted(set(kwargs) - set(entry.kwargs))
    if unknown:
        raise ValueError(
            f"Loss {name!r} got unexpected options {unknown}; it accepts {list(entry.kwargs)}"
        )
    if entry.single_shard and mesh is not None:
        shards = 1
        for axis in batch_axes:
            shards *= mesh.shape.get(axis, 1)
        if shards > 1:
            raise ValueError(
                f"Loss {name!r} is reference-only (it needs whole rows of the B x B logits) "
                f"and refuses a mesh that splits the batch over {shards} devices; use a "
                f"1-device mesh, or softmax_sharded / sigmoid_chunked")
    if not entry.sharded:
        return functools.partial(entry.fn, **kwargs) if kwargs else entry.fn
    if mesh is None:
        raise ValueError(
            f"Loss {name!r} is sharded and needs a mesh: create_loss({name!r}, mesh=..., "
            f"batch_axes=...), or use one of the reference losses "
            f"{[k for k, e in _REGISTRY.items() if not e.sharded]}."
        )
    batch_axes = tuple(batch_axes)
    missing = [a for a in batch_axes if a not in mesh.axis_names]
    if missing or not batch_axes:
        raise ValueError(f"batch_axes {batch_axes} must be non-empty axes of {mesh.axis_names}")
    local = functools.partial(entry.fn, axis_name=batch_axes, **kwargs)
    batch = P(batch_axes)
    in_specs = (batch, batch, P(), P(), batch)
    mapped = jax.shard_map(local, mesh=mesh, in_specs=in_specs, out_specs=P())
    # On a mesh with Explicit axes shard_map insists the inputs already carry these
    # shardings; reshard (a no-op when they do). Auto meshes let XLA move the data.
    explicit = AxisType.Explicit in tuple(getattr(mesh, "axis_types", ()))

    def loss_fn(
        zimg: jax.Array,
        ztxt: jax.Array,
        t: jax.Array,
        b: jax.Array | None = None,
        labels: jax.Array | None = None,
    ) -> tuple[jax.Array, Metrics]:
        # labels=None passes straight through: the shard-local forms build the diagonal
        # mask from axis_index, one local block at a time, with no B-sized arange.
        args = (zimg, ztxt, t, b, labels)
        if explicit:
            args = tuple(
                None if x is None else jax.reshard(x, NamedSharding(mesh, spec))
                for x, spec in zip(args, in_specs, strict=True)
            )
        return mapped(*args)

    return loss_fn


# Per loss: its create_loss options and the `loss.*` config keys they come from.
_LOSS_OPTIONS = {
    "sigmoid_chunked": {"bidirectional": "bidirectional"},
    "hn_nce": {"alpha": "hn_alpha", "beta": "hn_beta"},
    "debiased_softmax": {"tau_plus": "tau_plus"},
    "macl": {"beta": "macl_beta"},
}


def loss_from_config(config: Any, mesh: Mesh) -> LossFn:
    """The loss of a run's config (`loss.*`), sharded over the mesh's batch axes, with the
    alignment / uniformity terms when their weights are set."""
    cfg = config.loss
    options = {arg: cfg[key] for arg, key in _LOSS_OPTIONS.get(cfg.name, {}).items()}
    loss_fn = create_loss(cfg.name, mesh=mesh, batch_axes=BATCH_AXES, **options)
    if cfg.align_weight or cfg.uniform_weight:
        loss_fn = family.with_alignment_uniformity(loss_fn, cfg.align_weight, cfg.uniform_weight)
    return loss_fn
