"""Contrastive losses: softmax (CLIP) and sigmoid (SigLIP); reference, sharded, ring.

Use `create_loss(name, mesh=..., batch_axes=...)`, or `loss_from_config(config, mesh)` for a
run's `loss.*` keys; see docs/architecture.md, "Losses: the heart". It imports `data` (text
conventions), `parallel` and the base modules.
"""

from contrastive_jax.losses.chunked_softmax import softmax_loss_ring
from contrastive_jax.losses.reference import sigmoid_loss, softmax_loss
from contrastive_jax.losses.registry import (
    LOSS_NAMES,
    LOSSES,
    LossFn,
    check_loss_config,
    create_loss,
    loss_from_config,
)
from contrastive_jax.losses.sharded import sigmoid_loss_ring, softmax_loss_sharded

__all__ = [
    "LOSSES",
    "LOSS_NAMES",
    "LossFn",
    "check_loss_config",
    "create_loss",
    "loss_from_config",
    "sigmoid_loss",
    "sigmoid_loss_ring",
    "softmax_loss",
    "softmax_loss_ring",
    "softmax_loss_sharded",
]
