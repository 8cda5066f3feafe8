"""`bench recipes`: each published recipe's parameter count and GFLOPs per example, from
abstract shapes only (nothing is initialised or run), against its published figures.

Parameters come from `jax.eval_shape` of the model's init; FLOPs from XLA's cost analysis
of each tower's lowered (uncompiled) forward pass on one example, which counts 2 FLOPs per
multiply-add as torch's FlopCounterMode does (open_clip's model_profile.csv), plus the
elementwise work (softmax, norms, GELU) that torch's counter leaves out. `*_gflops` count
every position, as the published figures do; `*_gflops_run` is what the tower computes
(less where it pools one position: see models/transformer.py's EncoderBlock).
"""

from __future__ import annotations

import copy
import glob
import math
import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from contrastive_jax.errors import ConfigError
from contrastive_jax.models.state import ModelDef

# Top-level param groups of each tower (models/two_tower.py, models/one_tower.py).
_IMAGE, _TEXT = ("img", "img_head"), ("txt", "txt_head")


def _count(tree: Any) -> int:
    return sum(math.prod(x.shape) for x in jax.tree.leaves(tree))


def _gflops(fn, *args) -> float:
    cost = jax.jit(fn).lower(*args).cost_analysis()
    return float(cost["flops"]) / 1e9


def _tower_gflops(model_def: ModelDef, params: Any, rest: Any, x: Any, kind: str,
                  tower: str) -> tuple[float, float]:
    """(all positions, as run) GFLOPs of encoding one example. A tower that pools one
    position runs only that query through its last block (models/transformer.py); the
    published figures count every position, and so does the first number (the tower's
    full token output in place of its pooled one)."""
    def encode(p, x):
        return getattr(model_def.bind(p, rest), f"encode_{kind}")(x)

    def pooled(p, x):
        return getattr(model_def.bind(p, rest), tower)(x)

    def pooled_from_all_positions(p, x):
        return getattr(model_def.bind(p, rest), tower)(x, return_tokens=True)[0]

    run = _gflops(encode, params, x)
    return run - _gflops(pooled, params, x) + _gflops(pooled_from_all_positions, params, x), run


def _ratio(ours: float, paper: float | None) -> float | None:
    return None if paper is None else round(ours / paper, 4)


def tower_gflops(config: ml_collections.ConfigDict, params: Any = None,
                 rest: Any = None) -> dict[str, float]:
    """GFLOPs of one example's forward pass through each tower: `image` / `text` count every
    position (as the published figures do), `image_run` / `text_run` what the tower computes.
    From abstract shapes: `params` / `rest` are the model's (eval_shape'd if not given).

    Scanned layers are counted unrolled: XLA's cost analysis counts a loop's body once, so a
    `scan_layers` tower would report one layer's FLOPs; the layout does not change the work."""
    if config.model.get("scan_layers", False):
        config = copy.deepcopy(config)
        config.model.scan_layers = False
        params = rest = None  # stacked params do not fit the unrolled tower
    model_def = ModelDef(config.model)
    if params is None:
        params, rest = jax.eval_shape(lambda: ModelDef.init(config.model, jax.random.key(0)))
    img = config.model.image
    size = img.image_size if isinstance(img.image_size, int) else tuple(img.image_size)
    h, w = (size, size) if isinstance(size, int) else size
    image = jax.ShapeDtypeStruct((1, h, w, img.channels), jnp.float32)
    image_gflops, image_run = _tower_gflops(model_def, params, rest, image, "image", "img")
    if "text" in config.model:
        text = jax.ShapeDtypeStruct((1, config.model.text.max_len), jnp.int32)
        tower = "txt"
    else:  # one tower: captions are rendered images of the image's shape
        text, tower = image, "img"
    text_gflops, text_run = _tower_gflops(model_def, params, rest, text, "text", tower)
    return {"image": image_gflops, "image_run": image_run, "text": text_gflops,
            "text_run": text_run}


def recipe_row(config: ml_collections.ConfigDict, name: str) -> dict[str, Any]:
    """One recipe's counts, the published figures and their ratios."""
    params, rest = jax.eval_shape(lambda: ModelDef.init(config.model, jax.random.key(0)))
    image_params = _count([params[k] for k in _IMAGE if k in params])
    text_params = _count([params[k] for k in _TEXT if k in params])
    towers = tower_gflops(config, params, rest)
    image_gflops, image_run = towers["image"], towers["image_run"]
    text_gflops, text_run = towers["text"], towers["text_run"]

    paper = config.recipe
    if paper.params_paper is None:
        raise ConfigError(f"{name}: not a recipe (config key 'recipe.params_paper' is not set)")
    total_params, gflops = _count(params), image_gflops + text_gflops
    return {
        "bench": "recipe", "config": name,
        "params": total_params, "image_params": image_params, "text_params": text_params,
        "params_paper": paper.params_paper,
        "params_ratio": _ratio(total_params, paper.params_paper),
        "image_gflops": round(image_gflops, 2), "text_gflops": round(text_gflops, 2),
        "image_gflops_run": round(image_run, 2), "text_gflops_run": round(text_run, 2),
        "gflops": round(gflops, 2), "gflops_paper": paper.gflops_paper,
        "gflops_ratio": _ratio(gflops, paper.gflops_paper),
        "image_gflops_ratio": _ratio(image_gflops, paper.image_gflops_paper),
        "text_gflops_ratio": _ratio(text_gflops, paper.text_gflops_paper),
    }


def recipe_paths(directory: str = "configs/recipes") -> list[str]:
    """The recipe configs in `directory` (each declares its published figures)."""
    if not os.path.isdir(directory):
        raise ConfigError(f"no {directory}/ directory here: run from the repository root or "
                          "pass --config FILE for each recipe")
    return sorted(glob.glob(os.path.join(directory, "*.py")))
