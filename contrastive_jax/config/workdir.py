"""The config a training workdir was run with (`WORKDIR/config.json`), read back.

Every reader of a workdir (eval, export, `data score` / `data dedup`, `train.init_from`)
gets its config here, so they agree on the schema, the model's defaults and the overrides.
"""

from __future__ import annotations

from collections.abc import Sequence

from contrastive_jax import paths
from contrastive_jax.config.load import (
    ConfigDict,
    apply_overrides,
    default_config,
    merge_into,
    use_model_schema,
)
from contrastive_jax.errors import InputNotFoundError
from contrastive_jax.json_files import read_json


def load_workdir_config(workdir: str, overrides: Sequence[str] = ()) -> ConfigDict:
    """`workdir`'s saved config on today's schema, then `key=value` `overrides`."""
    path = paths.join(workdir, "config.json")
    if not paths.isfile(path):
        raise InputNotFoundError(f"{workdir} is not a training workdir: no config.json")
    config = default_config()
    saved = read_json(path, "workdir config")
    use_model_schema(config, saved.get("model", {}).get("name", config.model.name))
    merge_into(config, saved)
    # How the training job was launched (e.g. process 0's process_id) is not part of the run.
    config.distributed = default_config().distributed
    apply_overrides(config, overrides)
    return config
