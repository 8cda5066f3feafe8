"""Loss registry: the literal table `LOSSES` (each loss with its options and the `loss.*`
keys they come from); `create_loss(name, mesh=..., batch_axes=...)` -> a jit-able LossFn.

A LossFn takes GLOBAL arrays (sharded along `batch_axes` on `mesh`) and returns
`(loss, metrics)`. Sharded losses are wrapped in `jax.shard_map` here, so callers never
deal with shard-local code.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any, NamedTuple, Protocol

import jax
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from contrastive_jax.errors import ConfigError
from contrastive_jax.losses import chunked_softmax, family, reference, sharded
from contrastive_jax.parallel.mesh import BATCH_AXES
from contrastive_jax.registry import Registry

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


class LossEntry(NamedTuple):
    """One loss: its function and how `create_loss` and a run's `loss.*` keys build it."""

    fn: Callable[..., tuple[jax.Array, Metrics]]
    sharded: bool = False  # True: shard-local, needs a mesh and an `axis_name` kwarg.
    # The extra keyword arguments `create_loss` accepts -> the `loss.*` key each comes from.
    options: Mapping[str, str] = MappingProxyType({})
    check: Callable[..., None] | None = None  # the options' values; raises ValueError
    # Reference-only: refuses a mesh that splits the batch rather than gathering it.
    single_shard: bool = False
    takes_labels: bool = True  # False: positives are the diagonal (no loss.positives=labels)


LOSSES: Registry[LossEntry] = Registry("loss", {
    "softmax": LossEntry(reference.softmax_loss),
    "softmax_sharded": LossEntry(sharded.softmax_loss_sharded, sharded=True),
    "softmax_chunked": LossEntry(chunked_softmax.softmax_loss_ring, sharded=True,
                                 options={"bidirectional": "bidirectional", "tile": "tile"},
                                 check=sharded.check_tile),
    "sigmoid": LossEntry(reference.sigmoid_loss),
    "sigmoid_chunked": LossEntry(sharded.sigmoid_loss_ring, sharded=True,
                                 options={"bidirectional": "bidirectional", "tile": "tile"},
                                 check=sharded.check_tile),
    "hn_nce": LossEntry(family.hn_nce_loss, options={"alpha": "hn_alpha", "beta": "hn_beta"},
                        check=family.check_hn_nce_options, single_shard=True,
                        takes_labels=False),
    "debiased_softmax": LossEntry(family.debiased_softmax_loss,
                                  options={"tau_plus": "tau_plus"},
                                  check=family.check_debiased_options, single_shard=True,
                                  takes_labels=False),
    "macl": LossEntry(family.macl_loss, options={"beta": "macl_beta"},
                      check=family.check_macl_options, single_shard=True, takes_labels=False),
}, config_key="loss.name")
LOSS_NAMES: tuple[str, ...] = LOSSES.names()


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
    entry = LOSSES[name]  # an unknown name is a ConfigError naming 'loss.name'
    unknown = sorted(set(kwargs) - set(entry.options))
    if unknown:  # a caller's bug: loss_from_config passes exactly entry.options
        raise ValueError(
            f"Loss {name!r} got unexpected options {unknown}; it accepts {list(entry.options)}"
        )
    if entry.check is not None:
        entry.check(**kwargs)
    if entry.single_shard and mesh is not None:
        shards = 1
        for axis in batch_axes:
            shards *= mesh.shape.get(axis, 1)
        if shards > 1:  # the mesh comes from the run's config: the user's choice to change
            raise ConfigError(
                f"config key 'loss.name': loss {name!r} is reference-only (it needs whole rows "
                f"of the B x B logits) and refuses a mesh that splits the batch over {shards} "
                f"devices; use a 1-device mesh, or softmax_sharded / sigmoid_chunked")
    if not entry.sharded:
        return functools.partial(entry.fn, **kwargs) if kwargs else entry.fn
    if mesh is None:
        raise ValueError(
            f"Loss {name!r} is sharded and needs a mesh: create_loss({name!r}, mesh=..., "
            f"batch_axes=...), or use one of the reference losses "
            f"{[k for k, e in LOSSES.items() if not e.sharded]}."
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


def _options(entry: LossEntry, loss_config: Any) -> dict[str, Any]:
    return {arg: loss_config[key] for arg, key in entry.options.items()}


def check_loss_config(loss_config: Any) -> None:
    """ConfigError, naming the `loss.*` key, for values the named loss cannot use."""
    entry = LOSSES[loss_config.name]
    if loss_config.positives == "labels" and not entry.takes_labels:
        raise ConfigError(f"config key 'loss.positives': loss {loss_config.name!r} defines "
                          "positives as the diagonal only; use 'pairs'")
    if entry.check is not None:
        try:
            entry.check(**_options(entry, loss_config))
        except ValueError as e:  # the check compares numbers; it raises nothing else
            keys = ", ".join(f"'loss.{key}'" for key in entry.options.values())
            raise ConfigError(f"config key {keys}: {e}") from e


def loss_from_config(config: Any, mesh: Mesh) -> LossFn:
    """The loss of a run's config (`loss.*`), sharded over the mesh's batch axes, with the
    alignment / uniformity terms when their weights are set."""
    cfg = config.loss
    check_loss_config(cfg)
    loss_fn = create_loss(cfg.name, mesh=mesh, batch_axes=BATCH_AXES,
                          **_options(LOSSES[cfg.name], cfg))
    if cfg.align_weight or cfg.uniform_weight:
        loss_fn = family.with_alignment_uniformity(loss_fn, cfg.align_weight, cfg.uniform_weight)
    return loss_fn
