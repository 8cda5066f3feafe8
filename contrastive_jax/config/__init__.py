"""Run configuration: loading, overrides, checks, recipes, a workdir's saved config and the
eval-task schema.

`load_config("configs/NAME.py:k=v", ["a.b=v"])` reads a config file, applies overrides and
validates the result. Submodules: `load` (defaults, files, overrides), `checks` (relations
between keys), `workdir` (a run's saved config), `recipes` (the published recipes' shared
settings), `eval_tasks` (the `evals.tasks` schema). This package sits above `models`,
`losses`, `data` and `parallel` (whose config schemas its checks ask) and below everything that
runs a model; see docs/architecture.md.
"""

from contrastive_jax.config.checks import INIT_FROM_TOWERS, validate
from contrastive_jax.config.load import (
    apply_override,
    apply_overrides,
    config_to_json,
    default_config,
    load_config,
    load_config_file,
    merge_into,
    use_model_schema,
)

__all__ = ["INIT_FROM_TOWERS", "apply_override", "apply_overrides", "config_to_json",
           "default_config", "load_config", "load_config_file", "merge_into", "use_model_schema",
           "validate"]
