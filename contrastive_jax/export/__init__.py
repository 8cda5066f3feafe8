"""Export checkpoints as npz / safetensors / Hugging Face transformers directories."""

from __future__ import annotations

from contrastive_jax.errors import UserError
from contrastive_jax.export.native import FORMATS, export_native, load_exported


def export_checkpoint(workdir: str, fmt: str, out: str, *, step: int | None = None,
                      overwrite: bool = False) -> str:
    """Exports `workdir`'s checkpoint (`step`, default latest) in `fmt` to `out`."""
    from contrastive_jax.evaluate.workdir import load_workdir_config

    name = load_workdir_config(workdir).model.name
    if name != "two_tower":
        # The formats describe a text tower fed with token ids; a one-tower (CLIPPO) model
        # reads rendered captions, which none of them can express.
        raise UserError(f"export supports two_tower models only; {workdir} holds a {name!r} "
                        f"model (CLIPPO reads rendered captions, no export format has them)")
    if fmt == "hf":
        from contrastive_jax.export.hf import export_hf

        return export_hf(workdir, out, step=step, overwrite=overwrite)
    return export_native(workdir, fmt, out, step=step, overwrite=overwrite)


__all__ = ["FORMATS", "export_checkpoint", "export_native", "load_exported"]
