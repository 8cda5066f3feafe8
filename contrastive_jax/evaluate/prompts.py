"""Named prompt sets for zero-shot classification. Each template has one `{}`."""

from __future__ import annotations

from contrastive_jax.datasets.fashion_mnist_captions import ZEROSHOT_TEMPLATES, fill_template
from contrastive_jax.evaluate.clip_templates import CLIP_80, CLIP_BEST_7

PROMPT_SETS: dict[str, tuple[str, ...]] = {
    # Held out from the demo's training captions: zero-shot, not template matching.
    "fashion_mnist_heldout": tuple(ZEROSHOT_TEMPLATES),
    "class_name": ("{}",),
    "clip_80": CLIP_80,
    "clip_best_7": CLIP_BEST_7,
}


def get_prompts(name: str) -> tuple[str, ...]:
    if name not in PROMPT_SETS:
        raise ValueError(f"unknown prompt set {name!r}; known: {', '.join(PROMPT_SETS)}")
    return PROMPT_SETS[name]


def fill(template: str, class_name: str) -> str:
    """The prompt for one class, with English articles fixed ("an ankle boot")."""
    return fill_template(template, class_name)
