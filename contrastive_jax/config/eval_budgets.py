"""Evaluation at patch budgets: how a NaFlex model (`model.image.naflex`) reads eval images.

A NaFlex model sees each eval image at its own aspect ratio, resized so that its patch grid
fits a budget of `max_num_patches` (data/naflex.py, exactly as transformers'
Siglip2ImageProcessor). A task (zeroshot, fewshot) with budgets runs once per budget, named
"<name>@<budget>" (metrics `zeroshot/<name>@<budget>/top1`, a report row each); without
one, a NaFlex model reads at its position table's own size (g x g patches) under the task's
plain name. A fixed-size model reads square images as before; a budget for it is an error.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import ml_collections

from contrastive_jax.config.eval_tasks import BUDGET_KINDS
from contrastive_jax.errors import ConfigError
from contrastive_jax.models.sizes import resolve_size

FLAG = "--max-num-patches"


def naflex_patch(model: ml_collections.ConfigDict) -> int:
    """A NaFlex model's patch size."""
    # A NaFlex tower's patch and image size are square (models/naflex.py checks it).
    patch = model.image.get("patch_size")
    if patch is None:  # the variant's ("B/16")
        patch = resolve_size(model.image, tower="image", with_patch=True)["patch_size"]
    return int(patch if isinstance(patch, int) else patch[0])


def naflex_grid(model: ml_collections.ConfigDict) -> int | None:
    """The side g of a NaFlex model's g x g position table; None for a fixed-size tower."""
    image = model.get("image")
    if image is None or not image.get("naflex", False):
        return None
    size = image.image_size
    return int(size if isinstance(size, int) else size[0]) // naflex_patch(model)


def _check(budget: int, key: str, grid: int) -> int:
    # data/naflex.py imports TensorFlow: only a config with budgets pays for it.
    from contrastive_jax.data.naflex import check_budget

    return check_budget(budget, key, grid)


def _fixed_size(what: str) -> ConfigError:
    return ConfigError(f"{what} is for NaFlex models (model.image.naflex=True); this model's "
                       "image tower reads square images of model.image.image_size")


def at_budgets(task: dict[str, Any], model: ml_collections.ConfigDict) -> list[dict[str, Any]]:
    """The runs of one parsed task: a copy per budget, each with one `max_num_patches`
    (None: square images, a fixed-size model) and the patch size in `naflex_patch`."""
    if task["kind"] not in BUDGET_KINDS:
        return [task]
    grid, budgets = naflex_grid(model), task["max_num_patches"]
    key = f"max_num_patches of {task['kind']} task {task['name']!r}"
    if grid is None:
        if budgets is not None:
            raise _fixed_size(key)
        return [{**task, "max_num_patches": None, "naflex_patch": None}]
    patch = naflex_patch(model)
    if budgets is None:
        return [{**task, "max_num_patches": grid * grid, "naflex_patch": patch}]
    return [{**task, "name": f"{task['name']}@{b}", "max_num_patches": _check(b, key, grid),
             "naflex_patch": patch} for b in budgets]


def naflex_reading(task: dict[str, Any]) -> tuple[int, int] | None:
    """(patch, budget) for `LabelledImages.batches` of a run from `at_budgets`; None:
    square images."""
    patch = task.get("naflex_patch")
    return None if patch is None else (patch, task["max_num_patches"])


def check_flag(budgets: Sequence[int], model: ml_collections.ConfigDict) -> list[int]:
    """The `--max-num-patches` values, checked against the model."""
    grid = naflex_grid(model)
    if grid is None:
        raise _fixed_size(FLAG)
    return [_check(b, FLAG, grid) for b in budgets]


def set_budgets(config: ml_collections.ConfigDict, budgets: Sequence[int]) -> None:
    """`--max-num-patches` for `eval`: every zeroshot and fewshot task of `config` runs at
    `budgets`, whatever its own key says."""
    budgets = check_flag(budgets, config.model)
    tasks = list(config.evals.get("tasks", ()) or ())
    if not any(t.get("kind") in BUDGET_KINDS for t in tasks):
        raise ConfigError(f"{FLAG}: no {' or '.join(BUDGET_KINDS)} task to evaluate at a "
                          "budget")
    with config.evals.unlocked():
        config.evals.tasks = [{**t, "max_num_patches": list(budgets)}
                              if t.get("kind") in BUDGET_KINDS else t for t in tasks]
