"""A model type is its module and registry lines: the step factory, the config checks, the
evaluators and the exporter name no model type, and a new type trains through the one step
factory with no other file changed."""

from __future__ import annotations

import ast
import importlib.util
import re
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from flax import nnx
from helpers import fashion_tasks, synthetic_batches, tiny_config

from contrastive_jax.config import use_model_schema
from contrastive_jax.config.checks import validate
from contrastive_jax.errors import ConfigError
from contrastive_jax.models import registry as model_registry
from contrastive_jax.objectives import OBJECTIVES, Objective, objective_of
from contrastive_jax.objectives import registry as objective_registry
from contrastive_jax.objectives.base import refuse
from contrastive_jax.parallel.mesh import create_mesh, to_global
from contrastive_jax.registry import Registry
from contrastive_jax.train.init_state import create_train_state
from contrastive_jax.train.optimizer import create_optimizer
from contrastive_jax.train.step import train_step_from_config

PACKAGE = Path(__file__).resolve().parent.parent / "contrastive_jax"


def _module_file(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    assert spec is not None and spec.origin, name
    return Path(spec.origin)


def _asking_files() -> list[Path]:
    """The step factory's module, the config checks, every evaluator and the exporter."""
    files = [_module_file("contrastive_jax.train.step"),
             _module_file("contrastive_jax.config.checks"),
             _module_file("contrastive_jax.export"),
             _module_file("contrastive_jax.export.hf_layers")]
    return files + sorted((PACKAGE / "evaluate").glob("*.py"))


def _strings(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, text) of every string literal that is not a docstring (f-strings' parts too)."""
    docstrings = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                docstrings.add(id(body[0].value))
    return [(node.lineno, node.value) for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str)
            and id(node) not in docstrings]


def test_the_step_factory_config_checks_evaluators_and_exporter_name_no_model_type():
    names = set(OBJECTIVES) | set(model_registry.MODELS)
    kinds = {objective.kind for _, objective in OBJECTIVES.items()}
    pattern = re.compile(r"\b(" + "|".join(map(re.escape, sorted(names | kinds))) + r")\b")
    found = []
    for path in _asking_files():
        tree = ast.parse(path.read_text())
        found += [f"{path.relative_to(PACKAGE)}:{line}: {text!r}"
                  for line, text in _strings(tree) if pattern.search(text)]
        # Nor do they read a model's type off the model (`model_def.objective` was one).
        found += [f"{path.relative_to(PACKAGE)}:{node.lineno}: .objective"
                  for node in ast.walk(tree)
                  if isinstance(node, ast.Attribute) and node.attr == "objective"]
    assert not found, "model types named where the objective should be asked:\n" + "\n".join(
        found)


def test_the_scan_sees_a_model_name():
    # The scan above is not vacuous: a literal of a registered name is caught.
    tree = ast.parse('"""about cappa"""\nif name == "cappa":\n    pass\n')
    assert [text for _, text in _strings(tree)] == ["cappa"]


class Toy(nnx.Module):
    """A linear classifier of the image's row means: the smallest model that learns."""

    def __init__(self, config, *, rngs: nnx.Rngs):
        size = config["image"]["image_size"]
        self.head = nnx.Linear(size * config["image"]["channels"], config["classes"],
                               rngs=rngs)

    def __call__(self, images: jax.Array) -> jax.Array:
        return self.head(images.mean(axis=2).reshape(images.shape[0], -1))  # row means


def toy_config() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict({"name": "toy", "classes": 4, "image": {
        "image_size": 28, "channels": 1, "mask_ratio": 0.0}})


class ToyObjective(Objective):
    """Softmax cross-entropy of the labels; declares its batch keys and its one check."""

    kind = "toy"
    token_group = None

    def batch_keys(self, settings):
        return ("image", "label")

    def loss(self, model, batch, step, draws, settings):
        logits = model(batch["image"])
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"]).mean()
        return loss, {"accuracy": jnp.mean(jnp.argmax(logits, -1) == batch["label"])}

    def check_config(self, config, eval_kinds):
        refuse({"train.mixup.enabled": config.train.mixup.enabled}, "model 'toy'")


def test_a_registered_toy_objective_trains_through_the_one_step_factory(monkeypatch):
    models = dict(model_registry.MODELS.items())
    models["toy"] = model_registry.ModelEntry(Toy, toy_config)
    objectives = dict(OBJECTIVES.items())
    objectives["toy"] = ToyObjective()
    monkeypatch.setattr(model_registry, "MODELS", Registry("model", models,
                                                           config_key="model.name"))
    monkeypatch.setattr(objective_registry, "OBJECTIVES", Registry("model", objectives,
                                                                   config_key="model.name"))
    assert isinstance(objective_of("toy"), ToyObjective)

    config = tiny_config(optimizer={"lr": 0.1, "warmup_steps": 1})
    use_model_schema(config, "toy")
    validate(config)  # the generic checks and the toy's own pass
    config.train.mixup.enabled = True
    with pytest.raises(ConfigError, match="'train.mixup.enabled' does not apply to model 'toy'"):
        validate(config)
    config.train.mixup.enabled = False
    # The toy defines no zero-shot hooks, so a zeroshot task is refused at config time.
    assert not ToyObjective().has_zeroshot and objective_of("two_tower").has_zeroshot
    config.evals.tasks = fashion_tasks()[:1]
    with pytest.raises(ConfigError, match="model 'toy' has no zero-shot classifier"):
        validate(config)
    config.evals.tasks = []
    mesh = create_mesh(config.mesh, devices=jax.devices()[:2])
    tx, _ = create_optimizer(config.optimizer, config.train.steps)
    state, shardings = create_train_state(config, tx, mesh)
    step = train_step_from_config(config, mesh, tx, shardings)
    batch = synthetic_batches(1, config.train.batch_size)[0]
    # Labels a linear read-out can learn: the class of each image's brightest quarter.
    batch["label"] = np.argmax(batch["image"].reshape(16, 4, -1).mean(-1), -1).astype(np.int32)
    losses = []
    for _ in range(8):
        state, metrics = step(state, to_global(batch, mesh))
        losses.append(float(metrics["train/loss"]))
    assert {"train/loss", "train/accuracy", "train/grad_norm", "train/nonfinite",
            "train/grad_norm/head"} <= set(metrics)
    assert losses[-1] < 0.8 * losses[0], losses
    assert int(state.step) == 8


@pytest.mark.parametrize("name", ["cappa", "catlip", "siglip2"])
def test_an_objective_refuses_the_step_options_it_cannot_take(name):
    kind = objective_of(name).kind
    with pytest.raises(ValueError, match=f"a {kind} model takes neither micro-batches"):
        objective_of(name).check_step(microbatches=2, cached_image_embeddings=False,
                                      mixup=False, labels_as_positives=False)
    with pytest.raises(ValueError, match="mixup takes a two-tower contrastive step"):
        objective_of(name).check_step(microbatches=1, cached_image_embeddings=False,
                                      mixup=True, labels_as_positives=False)
