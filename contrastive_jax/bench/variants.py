"""Loss variants the memory benchmarks compare: report name -> (loss name, options).

Kept free of jax imports so the CLI can list them before XLA flags are fixed.
"""

from __future__ import annotations

from typing import Any

LOSS_VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    "softmax": ("softmax", {}),
    "softmax_sharded": ("softmax_sharded", {}),
    "softmax_chunked": ("softmax_chunked", {"bidirectional": False}),
    "softmax_chunked_bidir": ("softmax_chunked", {"bidirectional": True}),
    "sigmoid": ("sigmoid", {}),
    "sigmoid_chunked": ("sigmoid_chunked", {"bidirectional": False}),
    "sigmoid_chunked_bidir": ("sigmoid_chunked", {"bidirectional": True}),
    # loss.tile=256: each b x b block in b x 256 pieces.
    "softmax_chunked_tile256": ("softmax_chunked", {"bidirectional": False, "tile": 256}),
    "sigmoid_chunked_tile256": ("sigmoid_chunked", {"bidirectional": False, "tile": 256}),
}
LOSS_VARIANT_NAMES: tuple[str, ...] = tuple(LOSS_VARIANTS)
