"""Class lists and prompt templates of standard zero-shot data sets, shipped as data.

Each `class_lists/<name>.json` holds `{"source", "classes", "templates"}`: the class names and
templates CLIP / open_clip / clip_benchmark use for that dataset, copied from the source
its `source` names, classes in the label order of the matching TFDS dataset. Templates have
one `{}` (filled by `prompts.fill`). Files are read on first use and cached; importing this
module reads nothing (pure Python: no jax, no TensorFlow).
"""

from __future__ import annotations

import functools
import json
from importlib import resources
from typing import Any

from contrastive_jax.errors import ConfigError
from contrastive_jax.registry import Registry

_PACKAGE = "contrastive_jax.evaluate"
_FOLDER = "class_lists"


@functools.cache
def _load(name: str) -> dict[str, Any]:
    """The parsed file of list `name`, checked for the three keys."""
    path = resources.files(_PACKAGE).joinpath(_FOLDER, f"{name}.json")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:  # a broken install, never a user's typo
        raise ConfigError(f"class list {name!r}: cannot read {_FOLDER}/{name}.json "
                          f"({type(e).__name__}: {e})") from e
    missing = [k for k in ("source", "classes", "templates") if k not in data]
    if missing:
        raise ConfigError(f"class list {name!r}: {_FOLDER}/{name}.json has no {missing[0]!r}")
    return data


def _loader(name: str):
    def load() -> dict[str, Any]:
        return _load(name)
    return load


# name (a value of `evals.tasks[].classes`) -> loader of its file. TFDS dataset in comments.
CLASS_LISTS: Registry = Registry("class list", {
    "imagenet1k": _loader("imagenet1k"),  # imagenet2012
    "cifar10": _loader("cifar10"),  # cifar10
    "cifar100": _loader("cifar100"),  # cifar100
    "food101": _loader("food101"),  # food101
    "oxford_iiit_pet": _loader("oxford_iiit_pet"),  # oxford_iiit_pet
    "flowers102": _loader("flowers102"),  # oxford_flowers102
    "stl10": _loader("stl10"),  # stl10
    "sun397": _loader("sun397"),  # sun397
    "dtd": _loader("dtd"),  # dtd
    "eurosat": _loader("eurosat"),  # eurosat/rgb
    "gtsrb": _loader("gtsrb"),  # not in TFDS
    "country211": _loader("country211"),  # not in TFDS
    "mnist": _loader("mnist"),  # mnist
    "fashion_mnist": _loader("fashion_mnist"),  # fashion_mnist
}, config_key="evals.tasks[].classes")


def class_list(name: str) -> tuple[str, ...]:
    """The class names of list `name`, in label order; an unknown name is a ConfigError."""
    return tuple(CLASS_LISTS[name]()["classes"])


def list_templates(name: str) -> tuple[str, ...]:
    """The prompt templates shipped with list `name` (each with one `{}`)."""
    return tuple(CLASS_LISTS[name]()["templates"])


def list_source(name: str) -> str:
    """Where list `name`'s classes and templates were copied from."""
    return str(CLASS_LISTS[name]()["source"])
