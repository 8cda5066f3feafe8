"""A fresh train state with its optimizer state, initialised directly into its shardings."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import optax
from jax.sharding import Mesh

from contrastive_jax.models.state import ModelDef, TrainState, state_shardings
from contrastive_jax.train.lock import lock_patterns, split_params


def create_train_state(
    config: ml_collections.ConfigDict, tx: optax.GradientTransformation, mesh: Mesh
) -> tuple[TrainState, TrainState]:
    """Initialises the state directly into its shardings; returns (state, shardings)."""

    def init(rng: jax.Array) -> TrainState:
        params, rest = ModelDef.init(config.model, rng)
        # Optimizer state only for trainable params: locked ones have none (train/lock.py).
        trainable, _ = split_params(params, lock_patterns(config.train.locked))
        return TrainState(step=jnp.zeros((), jnp.int32), params=params, rest=rest,
                          opt_state=tx.init(trainable))

    rng = jax.random.key(config.seed)
    abstract = jax.eval_shape(init, rng)
    shardings = state_shardings(abstract, mesh, config.mesh)
    state = jax.jit(init, out_shardings=shardings)(rng)
    return state, shardings
