"""Model formats, both ways. Out: npz / safetensors / transformers / open_clip directories
(`FORMATS`). In: big_vision, transformers and open_clip checkpoints (`big_vision`,
`hf_import`), and `model_spec`, which turns any model SPEC into a loaded model. The name says
export; the package holds the imports too.

The weights are restored once, by checkpoints/store.py's restore_params; each format only
converts them. FORMATS: name -> exporter(config, params, step, tokenizer_file, out, *,
overwrite) -> the written directory. It imports `checkpoints`, `config`, `models`, `data`
(text conventions, tokenizers) and below, never `train` or `evaluate` (docs/architecture.md).
"""

from __future__ import annotations

from functools import partial

import jax

from contrastive_jax import paths
from contrastive_jax.checkpoints.store import restore_params
from contrastive_jax.config.workdir import load_workdir_config
from contrastive_jax.errors import UserError
from contrastive_jax.export.hf import export_hf
from contrastive_jax.export.native import TOKENIZER_FILE, export_weights, load_exported
from contrastive_jax.export.open_clip_format import export_open_clip
from contrastive_jax.objectives import models_with, objective_of
from contrastive_jax.registry import Registry

FORMATS = Registry("export format", {
    "npz": partial(export_weights, "npz"),
    "safetensors": partial(export_weights, "safetensors"),
    "hf": export_hf,
    "open_clip": export_open_clip,
}, config_key=None)


def export_checkpoint(workdir: str, fmt: str, out: str, *, step: int | None = None,
                      overwrite: bool = False) -> str:
    """Exports `workdir`'s checkpoint (`step`, default latest) in `fmt` to `out`. `workdir`
    may also be any model SPEC (export dir, big_vision:, hf:, open_clip:): a conversion."""
    exporter = FORMATS[fmt]  # an unknown format: one line, before anything is read
    from contrastive_jax.export.model_spec import load_model, spec_kind

    if spec_kind(workdir) != "workdir":
        model = load_model(workdir)
        params = jax.device_get(model.state.params)
        return exporter(model.config, params, model.step, model.text_encoder.model_path, out,
                        overwrite=overwrite)
    name = load_workdir_config(workdir).model.name
    objective = objective_of(name)
    if objective.export_refusal is not None:
        # The formats describe two towers, the text one fed with token ids.
        exporters = models_with(lambda o: o.export_refusal is None)
        raise UserError(f"export supports {' and '.join(exporters)} models only (as their "
                        f"two towers); {workdir} holds a {name!r} model: "
                        f"{objective.export_refusal}, which no export format has")
    config, params, step = restore_params(workdir, step)
    # What the formats write: e.g. without training-only parts (a decoder, a teacher).
    config.model, params = objective.export_params(config.model, params)
    return exporter(config, params, step, paths.join(workdir, TOKENIZER_FILE), out,
                    overwrite=overwrite)


__all__ = ["FORMATS", "export_checkpoint", "load_exported"]
