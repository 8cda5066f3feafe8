"""Export checkpoints as npz / safetensors / Hugging Face transformers directories."""

from __future__ import annotations

from contrastive_jax.export.native import FORMATS, export_native, load_exported


def export_checkpoint(workdir: str, fmt: str, out: str, *, step: int | None = None,
                      overwrite: bool = False) -> str:
    """Exports `workdir`'s checkpoint (`step`, default latest) in `fmt` to `out`."""
    if fmt == "hf":
        from contrastive_jax.export.hf import export_hf

        return export_hf(workdir, out, step=step, overwrite=overwrite)
    return export_native(workdir, fmt, out, step=step, overwrite=overwrite)


__all__ = ["FORMATS", "export_checkpoint", "export_native", "load_exported"]
