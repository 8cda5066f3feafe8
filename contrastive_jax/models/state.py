"""Train state as a pytree of plain dicts, and `ModelDef`, which binds such dicts back into
the model. `train/init_state.py` creates the state with its optimizer state."""

from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import nnx
from jax.sharding import Mesh

from contrastive_jax.models import create_model
from contrastive_jax.models.registry import DEFAULT_MODEL
from contrastive_jax.parallel.sharding import tree_shardings

# What the optimizer trains: every nnx.Param except an EMA teacher's (models/siglip2.py),
# which stays with the other non-trained state in `rest`.
TRAINED = nnx.All(nnx.Param, nnx.Not(nnx.PathContains("teacher")))


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: dict[str, Any]  # all nnx.Param values (locked ones too), as a nested dict
    rest: dict[str, Any]  # any other model state (buffers), never touched by the optimizer
    opt_state: optax.OptState


class ModelDef:
    """A model's structure without its values: turns param dicts back into an nnx.Module.

    Keeping params as plain dicts keeps the train state a simple pytree for optax, orbax
    and exporters, while model code stays ordinary NNX modules.
    """

    def __init__(self, model_config: ml_collections.ConfigDict):
        abstract = nnx.eval_shape(lambda: create_model(model_config, rngs=nnx.Rngs(0)))
        # Patch tokens per image, for the step's FLIP mask noise (0: no image tower).
        self.image_patches = getattr(getattr(abstract, "img", None), "num_patches", 0)
        # `model.name`: the key of its objective (objectives/), which says what the step
        # trains and how the model is scored and exported.
        self.name = model_config.get("name", DEFAULT_MODEL)
        self.parallel_fraction = getattr(abstract, "parallel_fraction", 0.0)
        self.abstract = abstract  # its plain attributes (floats, flags) only
        self.graphdef, self._params, self._rest = nnx.split(abstract, TRAINED, ...)

    def bind(self, params: dict[str, Any], rest: dict[str, Any] | None = None) -> nnx.Module:
        param_state = jax.tree.map(lambda x: x, self._params)  # a fresh copy to fill in
        nnx.replace_by_pure_dict(param_state, params)
        rest_state = jax.tree.map(lambda x: x, self._rest)
        if rest:
            nnx.replace_by_pure_dict(rest_state, rest)
        return nnx.merge(self.graphdef, param_state, rest_state)

    @staticmethod
    def init(model_config: ml_collections.ConfigDict, rng: jax.Array) -> tuple[dict, dict]:
        model = create_model(model_config, rngs=nnx.Rngs(rng))
        _, params, rest = nnx.split(model, TRAINED, ...)
        return params.to_pure_dict(), rest.to_pure_dict()


def state_shardings(abstract_state: TrainState, mesh: Mesh,
                    mesh_config: ml_collections.ConfigDict) -> TrainState:
    """Sharding of every leaf of the train state, from the config's `mesh` rules.

    Params and the optimizer's per-parameter moments (same key paths) get the same shardings;
    the step counter, optimizer counts and other scalars are replicated.
    """
    return tree_shardings(abstract_state, mesh, mesh_config.rules, mesh_config.fsdp_min_size)


def weights_state_shapes(config: ml_collections.ConfigDict,
                         mesh: Mesh) -> tuple[TrainState, TrainState]:
    """(shapes, shardings) of a state without optimizer state (`opt_state=None`), for
    evaluation and export: nothing is computed, and nothing for the optimizer exists."""

    def init(rng: jax.Array) -> TrainState:
        params, rest = ModelDef.init(config.model, rng)
        return TrainState(step=jnp.zeros((), jnp.int32), params=params, rest=rest,
                          opt_state=None)

    shapes = jax.eval_shape(init, jax.random.key(config.seed))
    return shapes, state_shardings(shapes, mesh, config.mesh)


def abstract_state(state_or_shapes: TrainState, shardings: TrainState) -> TrainState:
    """ShapeDtypeStructs carrying shardings, as orbax restores want them."""
    return jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), state_or_shapes, shardings
    )
