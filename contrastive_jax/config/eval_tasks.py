"""The `evals.tasks` schema: task and data kinds, their keys and defaults.

A task is a dict `{kind, name, data: {kind, ...}, every, ...per-kind options}`; its metrics
are `<kind>/<name>/<metric>`. Pure Python (no jax, no TensorFlow): `config.validate` checks
every task before a run starts, so a typo fails in one line, not at the first eval.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from contrastive_jax.errors import ConfigError

REQUIRED = object()  # a key without a default

# Keys every task takes; `every`: evaluate every N train steps (0: at every eval step).
_COMMON: dict[str, Any] = {"kind": REQUIRED, "name": REQUIRED, "data": REQUIRED, "every": 0,
                           "batch_size": 256}
# Per task kind: its own keys and their defaults.
TASK_KEYS: dict[str, dict[str, Any]] = {
    # classes "": the dataset's own label names (TFDS ClassLabel, folder names, ...);
    # prompts "": the shipped templates of `classes` when it names a list, else clip_80;
    # a name (clip_80, cifar10, ...) or a list of templates, each with one "{}".
    # template_average (captioners): "likelihood" scores a class by the log of its prompts'
    # mean likelihood, "log_likelihood" by their mean log-likelihood.
    # max_num_patches (NaFlex models, model.image.naflex): a budget of patches or a list of
    # them; images at their own aspect ratio, one run (and metric row) per budget, named
    # "<name>@<budget>". None: the model's own table size, as "<name>".
    "zeroshot": {"classes": "", "prompts": "", "template_average": "likelihood",
                 "max_num_patches": None},
    # captions_key: a TFDS sequence of captions per image (COCO protocol); "" compares
    # num_examples held-out (image, caption) pairs of the dataset (one caption each).
    "retrieval": {"captions_key": "captions/text", "num_examples": 0, "chunk": 1024},
    # Linear probe (big_vision's fewshot_lsr) fit on shots per class of `train_data`
    # (default: `data` with split "train"), tested on `data`; mean over seeds.
    "fewshot": {"train_data": {}, "shots": [1, 5, 10, 25], "seeds": 3, "l2_reg": 2.0**10,
                "classes": "", "max_num_patches": None},
    # Alignment and uniformity (Wang & Isola) of num_examples held-out (image, caption)
    # pairs of a TFDS split; no headline (it is not a score to maximise).
    "embedding_stats": {"num_examples": 1000},
}
TEMPLATE_AVERAGES = ("likelihood", "log_likelihood")
# Per data kind: its keys and their defaults.
DATA_KEYS: dict[str, dict[str, Any]] = {
    "tfds": {"name": REQUIRED, "split": "test", "data_dir": "", "image_key": "image",
             "label_key": "label"},
    "image_folder": {"path": REQUIRED},  # one subfolder per class, named by the class
    # CSV/TSV/JSONL by the file's extension; image paths relative to `root` (default: the
    # table's folder). The same kind and columns as a training source's `table`.
    "table": {"path": REQUIRED, "image_column": "image", "label_column": "label", "root": ""},
    # label "cls": the sample's `.cls` member; any other name: that key of its `.json`.
    "webdataset": {"pattern": REQUIRED, "label": "cls"},
}
BUDGET_KINDS = ("zeroshot", "fewshot")  # the task kinds that take `max_num_patches`
HEADLINE = {"zeroshot": "top1", "retrieval": "mean_r1", "fewshot": "10shot",
            "embedding_stats": None}


def _fill(spec: Any, keys: dict[str, Any], where: str, what: str) -> dict[str, Any]:
    if not isinstance(spec, Mapping):
        raise ConfigError(f"config key '{where}' must be a dict, got {spec!r}")
    unknown = [k for k in spec if k not in keys]
    if unknown:
        raise ConfigError(f"config key '{where}.{unknown[0]}': unknown for {what} "
                          f"(known: {', '.join(keys)})")
    out = {k: v if v is REQUIRED else copy.deepcopy(v) for k, v in keys.items()}
    out.update({k: copy.deepcopy(v) for k, v in spec.items()})
    missing = [k for k, v in out.items() if v is REQUIRED or v in ("", None) and
               keys[k] is REQUIRED]
    if missing:
        raise ConfigError(f"config key '{where}.{missing[0]}' is required for {what}")
    return out


def parse_data(spec: Any, where: str) -> dict[str, Any]:
    """A data spec with its kind's defaults filled in; ConfigError naming the key otherwise."""
    kind = spec.get("kind") if isinstance(spec, Mapping) else None
    if kind not in DATA_KEYS:
        raise ConfigError(f"config key '{where}.kind': unknown data kind {kind!r} "
                          f"(known: {', '.join(DATA_KEYS)})")
    return _fill(spec, {"kind": kind, **DATA_KEYS[kind]}, where, f"data kind {kind!r}")


def parse_task(spec: Any, index: int) -> dict[str, Any]:
    """One task with defaults filled in and its data parsed."""
    where = f"evals.tasks[{index}]"
    kind = spec.get("kind") if isinstance(spec, Mapping) else None
    if kind not in TASK_KEYS:
        raise ConfigError(f"config key '{where}.kind': unknown task kind {kind!r} "
                          f"(known: {', '.join(TASK_KEYS)})")
    task = _fill(spec, {**_COMMON, **TASK_KEYS[kind]}, where, f"a {kind} task")
    name = task["name"]
    if not isinstance(name, str) or not name or "/" in name:
        raise ConfigError(f"config key '{where}.name' must be a non-empty name without '/', "
                          f"got {name!r}")
    task["data"] = parse_data(task["data"], f"{where}.data")
    if kind == "fewshot":
        train = dict(task["train_data"]) or {**task["data"], "split": "train"}
        task["train_data"] = parse_data(train, f"{where}.train_data")
        shots = task["shots"]
        if not shots or min(shots) < 1 or task["seeds"] < 1:
            raise ConfigError(f"config key '{where}': shots must be positive and seeds >= 1")
    if kind == "zeroshot":
        _check_prompts(task["prompts"], f"{where}.prompts")
    if kind == "zeroshot" and task["template_average"] not in TEMPLATE_AVERAGES:
        raise ConfigError(f"config key '{where}.template_average' must be one of "
                          f"{', '.join(TEMPLATE_AVERAGES)}, got {task['template_average']!r}")
    if kind in ("retrieval", "embedding_stats") and task["data"]["kind"] != "tfds":
        raise ConfigError(f"config key '{where}.data.kind': {kind} reads TFDS captions "
                          f"(kind 'tfds'), got {task['data']['kind']!r}")
    if kind == "retrieval" and (not isinstance(task["chunk"], int) or task["chunk"] < 1):
        raise ConfigError(f"config key '{where}.chunk' must be an integer >= 1, "
                          f"got {task['chunk']!r}")
    if kind in BUDGET_KINDS:
        task["max_num_patches"] = _budgets(task["max_num_patches"], f"{where}.max_num_patches")
    for key in ("every", "batch_size"):
        value = task[key]
        if not isinstance(value, int) or isinstance(value, bool) or value < (key == "batch_size"):
            raise ConfigError(f"config key '{where}.{key}' must be an integer >= "
                              f"{int(key == 'batch_size')}, got {value!r}")
    return task


def _budgets(value: Any, where: str) -> list[int] | None:
    """`max_num_patches` as a list of distinct positive ints (None: not given)."""
    if value is None:
        return None
    values = list(value) if isinstance(value, (list, tuple)) else [value]
    if not values or any(isinstance(v, bool) or not isinstance(v, int) or v < 1
                         for v in values) or len(set(values)) != len(values):
        raise ConfigError(f"config key '{where}' must be a number of patches >= 1 or a list "
                          f"of distinct ones, got {value!r}")
    return values


def _check_prompts(prompts: Any, where: str) -> None:
    """A prompt set's name, or a non-empty list of templates with one "{}" each."""
    if isinstance(prompts, str):
        return  # a name: the registry names the known ones when it is used
    ok = isinstance(prompts, (list, tuple)) and prompts and all(
        isinstance(t, str) and t.count("{}") == 1 and t.replace("{}", "").count("{") == 0
        for t in prompts)
    if not ok:
        raise ConfigError(f"config key '{where}' must name a prompt set or list templates "
                          f'with one "{{}}" each, got {prompts!r}')


def tasks_of(config: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Every task of `evals.tasks`, validated, defaults filled in. Two tasks of one kind and
    name are a ConfigError."""
    specs = list(config["evals"].get("tasks", ()) or ())
    tasks = [parse_task(spec, i) for i, spec in enumerate(specs)]
    seen: set[tuple[str, str]] = set()
    for task in tasks:
        key = (task["kind"], task["name"])
        if key in seen:
            raise ConfigError(f"config key 'evals.tasks': two {key[0]} tasks are named "
                              f"{key[1]!r} (metric keys must be unique)")
        seen.add(key)
    return tasks


def due(task: Mapping[str, Any], step: int | None, eval_every: int) -> bool:
    """Whether `task` runs at train step `step`: every `task.every` steps, or at every
    `train.eval_every` when it sets none. `step` None (a standalone or final eval): always."""
    every = task["every"] or eval_every
    return step is None or bool(every) and step % every == 0


def any_due(tasks: list[dict[str, Any]], step: int, eval_every: int) -> bool:
    """Whether the loop evaluates at `step`: some task is due, or the eval interval is up."""
    return (bool(eval_every) and step % eval_every == 0) or any(
        due(task, step, eval_every) for task in tasks)


def headline_key(task: Mapping[str, Any]) -> str | None:
    """The metric key of the task's one number for `suite/mean`: top-1, mean recall@1,
    10-shot accuracy (or the most shots a few-shot task has, when it has no 10); None for
    a task without one (embedding statistics)."""
    kind, name = task["kind"], task["name"]
    metric = HEADLINE[kind]
    if metric is None:
        return None
    if kind == "fewshot" and 10 not in task["shots"]:
        metric = f"{max(task['shots'])}shot"
    return f"{kind}/{name}/{metric}"
