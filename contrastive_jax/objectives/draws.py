"""The train step's random draws: functions of (seed, stream, step) alone, so a resumed run
draws exactly as an unbroken one, and with partitionable threefry the same on any mesh."""

from __future__ import annotations

import jax

# Keep the step's draws apart from each other and from the init key of the same seed.
FLIP_STREAM, PARALLEL_STREAM, VIEWS_STREAM, MIXUP_STREAM = 0xF11F, 0xCA99A, 0x5E1F, 0x313C


def step_key(seed: int, stream: int, step: jax.Array) -> jax.Array:
    """The key of (seed, stream, step)."""
    return jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), stream), step)


def flip_noise(seed: int, step: jax.Array, batch_size: int, patches: int) -> jax.Array:
    """[B, patches] uniform noise of FLIP's mask at `step`."""
    return jax.random.uniform(step_key(seed, FLIP_STREAM, step), (batch_size, patches))


def parallel_draw(seed: int, step: jax.Array, batch_size: int, fraction: float) -> jax.Array:
    """[B] bool: the examples a captioner predicts in parallel at `step` (CapPa)."""
    return jax.random.uniform(step_key(seed, PARALLEL_STREAM, step), (batch_size,)) < fraction
