"""Named prompt sets for zero-shot classification. Each template has one `{}`.

A set is a tuple of templates, or (a standard data set's templates, shipped as data in
`class_lists/<name>.json`) a loader that reads them on first use, so importing stays cheap.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

from contrastive_jax.datasets.fashion_mnist_captions import ZEROSHOT_TEMPLATES, fill_template
from contrastive_jax.evaluate.class_list_files import CLASS_LISTS, list_templates
from contrastive_jax.evaluate.clip_templates import CLIP_80, CLIP_BEST_7
from contrastive_jax.registry import Registry

PROMPT_SETS: Registry[tuple[str, ...] | Callable[[], tuple[str, ...]]] = Registry("prompt set", {
    # Held out from the demo's training captions: zero-shot, not template matching.
    "fashion_mnist_heldout": tuple(ZEROSHOT_TEMPLATES),
    "class_name": ("{}",),
    "clip_80": CLIP_80,
    "clip_best_7": CLIP_BEST_7,
    # Each shipped class list's templates, under its name (prompts="cifar10").
    **{name: functools.partial(list_templates, name) for name in CLASS_LISTS},
}, config_key="evals.tasks[].prompts")


def get_prompts(name: str) -> tuple[str, ...]:
    """The templates of prompt set `name`; an unknown name is a ConfigError."""
    entry = PROMPT_SETS[name]
    return entry() if callable(entry) else entry


def fill(template: str, class_name: str) -> str:
    """The prompt for one class, with English articles fixed ("an ankle boot")."""
    return fill_template(template, class_name)
