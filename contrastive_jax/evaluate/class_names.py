"""The class names and prompt templates a task scores: a shipped class list, an inline
list, or the data's own names, checked to be words a text tower can read."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from contrastive_jax.data.labelled import LabelledImages
from contrastive_jax.errors import ConfigError, DataError
from contrastive_jax.evaluate.class_list_files import CLASS_LISTS, class_list
from contrastive_jax.evaluate.prompts import PROMPT_SETS, get_prompts

# WordNet ids (ImageNet's TFDS label names) and bare numbers are not words: a prompt
# "a photo of a n01440764." scores nothing real.
_NOT_A_WORD = re.compile(r"^(n\d{8}|[\W\d_]*)$")


def _given_classes(task: dict[str, Any], where: str) -> list[str] | None:
    classes = task["classes"]
    if isinstance(classes, str):
        return list(class_list(classes)) if classes else None
    if isinstance(classes, Sequence) and classes and all(isinstance(c, str) and c
                                                         for c in classes):
        return list(classes)
    raise ConfigError(f"config key '{where}.classes' must name a shipped list "
                      f"({', '.join(CLASS_LISTS.names())}) or list class names, got {classes!r}")


def task_class_names(task: dict[str, Any], images: LabelledImages, where: str) -> list[str]:
    """The names of the task's classes, indexed by label id. A given list replaces the
    data's names (a folder's sorted subfolders map to it in order, so their counts must
    agree); without one, the data's names must be words, or the task is refused."""
    given = _given_classes(task, where)
    names = given if given is not None else images.names
    if names is None:
        raise DataError(f"{where}: its labels are numbers without names; set "
                        f"'classes' to a shipped list or a list of names")
    if given is None:
        odd = [n for n in names if _NOT_A_WORD.match(str(n))]
        if odd:
            raise DataError(f"{where}: its label names are not words (e.g. {odd[0]!r}); set "
                            f"'classes' to a shipped list or a list of names")
    elif images.names is not None and len(images.names) != len(given):
        raise DataError(f"{where}: the data has {len(images.names)} classes, its class list "
                        f"{len(given)}")
    if len(images) and int(images.labels.max()) >= len(names):
        raise DataError(f"{where}: label {int(images.labels.max())} has no class name "
                        f"({len(names)} names)")
    return [str(n) for n in names]


def task_prompts(task: dict[str, Any]) -> tuple[str, ...]:
    """The task's prompt set (a name, or its own list of templates); by default the
    templates shipped with its class list, or CLIP's 80 ImageNet templates."""
    name = task["prompts"]
    if isinstance(name, (list, tuple)):  # checked by task_schema: templates with one "{}"
        return tuple(name)
    if not name:
        classes = task["classes"]
        name = classes if isinstance(classes, str) and classes in PROMPT_SETS else "clip_80"
    return get_prompts(name)
