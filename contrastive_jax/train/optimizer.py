"""AdamW with warmup + cosine, global-norm clipping, weight decay on matrices only."""

from __future__ import annotations

import jax
import ml_collections
import optax


def decay_mask(params):
    """Weight decay on matmul kernels only (as big_vision's `.*/kernel`): never on t, b,
    norm scales, biases (some of which are 2-D, e.g. per-head attention biases),
    position embeddings or pooling probes."""

    def is_kernel(path, _) -> bool:
        last = path[-1]
        return getattr(last, "key", getattr(last, "name", None)) == "kernel"

    return jax.tree_util.tree_map_with_path(is_kernel, params)


def create_optimizer(
    config: ml_collections.ConfigDict, total_steps: int
) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """Returns the optimizer and its learning-rate schedule (for logging)."""
    schedule = optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=config.lr,
        warmup_steps=config.warmup_steps,
        decay_steps=total_steps,
        end_value=config.lr * config.end_lr_fraction,
    )
    parts = []
    if config.grad_clip_norm > 0:
        parts.append(optax.clip_by_global_norm(config.grad_clip_norm))
    parts.append(
        optax.adamw(
            schedule,
            b1=config.b1,
            b2=config.b2,
            eps=config.eps,
            weight_decay=config.weight_decay,
            mask=decay_mask,
        )
    )
    return optax.chain(*parts), schedule
