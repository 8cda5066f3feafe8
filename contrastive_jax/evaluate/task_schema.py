"""The `evals.tasks` schema: task and data kinds, their keys and defaults, and the legacy
`evals.zeroshot` / `evals.retrieval` / `evals.fewshot` groups read as tasks.

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
    "zeroshot": {"classes": "", "prompts": "", "template_average": "likelihood"},
    # captions_key: a TFDS sequence of captions per image (COCO protocol); "" compares
    # num_examples held-out (image, caption) pairs of the dataset (one caption each).
    "retrieval": {"captions_key": "captions/text", "num_examples": 0, "chunk": 1024},
    # Linear probe (big_vision's fewshot_lsr) fit on shots per class of `train_data`
    # (default: `data` with split "train"), tested on `data`; mean over seeds.
    "fewshot": {"train_data": {}, "shots": [1, 5, 10, 25], "seeds": 3, "l2_reg": 2.0**10,
                "classes": ""},
}
TEMPLATE_AVERAGES = ("likelihood", "log_likelihood")
# Per data kind: its keys and their defaults.
DATA_KEYS: dict[str, dict[str, Any]] = {
    "tfds": {"name": REQUIRED, "split": "test", "data_dir": "", "image_key": "image",
             "label_key": "label"},
    "folder": {"path": REQUIRED},  # one subfolder per class
    "csv": {"path": REQUIRED, "image_column": "image", "label_column": "label", "root": ""},
    "jsonl": {"path": REQUIRED, "image_column": "image", "label_column": "label", "root": ""},
    # label "cls": the sample's `.cls` member; any other name: that key of its `.json`.
    "webdataset": {"pattern": REQUIRED, "label": "cls"},
}
HEADLINE = {"zeroshot": "top1", "retrieval": "mean_r1", "fewshot": "10shot"}


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
    if kind == "retrieval" and task["data"]["kind"] != "tfds":
        raise ConfigError(f"config key '{where}.data.kind': retrieval reads TFDS captions "
                          f"(kind 'tfds'), got {task['data']['kind']!r}")
    for key in ("every", "batch_size"):
        value = task[key]
        if not isinstance(value, int) or isinstance(value, bool) or value < (key == "batch_size"):
            raise ConfigError(f"config key '{where}.{key}' must be an integer >= "
                              f"{int(key == 'batch_size')}, got {value!r}")
    return task


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


def _legacy_tasks(evals: Mapping[str, Any], data: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The pre-`tasks` groups (still the defaults of old configs and workdirs) as tasks."""
    def tfds(name: str, split: str) -> dict[str, Any]:
        return {"kind": "tfds", "name": name, "split": split, "data_dir": data["data_dir"],
                "image_key": data["image_key"], "label_key": data["label_key"]}

    out = []
    zs = evals["zeroshot"]
    if zs["enabled"]:
        out.append({"kind": "zeroshot", "name": zs["name"], "prompts": zs["prompts"],
                    "data": tfds(zs["dataset"], zs["split"]), "batch_size": zs["batch_size"],
                    "template_average": zs["template_average"]})
    rc = evals["retrieval"]
    if rc["enabled"]:
        # dataset "": held-out pairs of the zero-shot split, as before tasks existed.
        held_out = not rc["dataset"]
        source = tfds(zs["dataset"], zs["split"]) if held_out else tfds(rc["dataset"],
                                                                       rc["split"])
        out.append({"kind": "retrieval", "name": rc["name"], "data": source,
                    "captions_key": "" if held_out else rc["captions_key"],
                    "num_examples": rc["num_examples"], "chunk": rc["chunk"]})
    fs = evals["fewshot"]
    if fs["enabled"]:
        out.append({"kind": "fewshot", "name": fs["name"], "data": tfds(fs["dataset"],
                                                                       fs["test_split"]),
                    "train_data": tfds(fs["dataset"], fs["train_split"]),
                    "shots": list(fs["shots"]), "seeds": fs["seeds"], "l2_reg": fs["l2_reg"],
                    "batch_size": fs["batch_size"]})
    return out


def tasks_of(config: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Every task a config runs: the legacy groups that are enabled, then `evals.tasks`;
    validated, defaults filled in. Two tasks of one kind and name are a ConfigError."""
    evals = config["evals"]
    specs = list(evals.get("tasks", ()) or ())
    tasks = [parse_task(spec, i) for i, spec in enumerate(specs)]
    tasks = [parse_task(spec, i) for i, spec in
             enumerate(_legacy_tasks(evals, config["data"]))] + tasks
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


def headline_key(task: Mapping[str, Any]) -> str:
    """The metric key of the task's one number for `suite/mean`: top-1, mean recall@1,
    10-shot accuracy (or the most shots a few-shot task has, when it has no 10)."""
    kind, name = task["kind"], task["name"]
    metric = HEADLINE[kind]
    if kind == "fewshot" and 10 not in task["shots"]:
        metric = f"{max(task['shots'])}shot"
    return f"{kind}/{name}/{metric}"
