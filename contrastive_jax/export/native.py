"""Export restored weights as npz or safetensors + a JSON model card, and load them back.

An export directory holds:
    params.npz | model.safetensors   flat '/'-joined parameter names (see `flat.py`)
    export_config.json               everything needed to rebuild and feed the model
    tokenizer.model                  the run's sentencepiece model, copied
"""

from __future__ import annotations

import io
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import jax
import numpy as np

from contrastive_jax import paths
from contrastive_jax.data import text_conventions
from contrastive_jax.data.text_conventions import EOS_ID, TextConventions
from contrastive_jax.errors import DataError, InputNotFoundError, UserError
from contrastive_jax.export.flat import flatten, unflatten
from contrastive_jax.json_files import field, read_json

if TYPE_CHECKING:  # the tokenizer loads TensorFlow; only load_exported needs it
    from contrastive_jax.data.tokenizer import Tokenizer

CONFIG_FILE = "export_config.json"
TOKENIZER_FILE = "tokenizer.model"
WEIGHT_FILES = {"npz": "params.npz", "safetensors": "model.safetensors"}


def export_config(config: Any, params: dict, step: int) -> dict[str, Any]:
    """The JSON card: model architecture, input conventions, loss, t and b."""
    data = config.data
    conventions = text_conventions.for_model(config)
    return {
        "format_version": 1,
        "step": step,
        "model": json.loads(json.dumps(config.model.to_dict(), default=str)),
        "image": {"size": data.image_size, "channels": config.model.image.channels,
                  "value_range": list(data.value_range),
                  "layout": "NHWC float32; uint8 pixels v map to lo + v * (hi - lo) / 255"},
        # The model's text conventions (pad_id, eos, lowercase, max_len); `card_conventions`
        # reads them back, and cards written before them as pad 0, sticky EOS.
        "text": {**conventions.to_dict(), "tokenizer": TOKENIZER_FILE, "eos_id": EOS_ID,
                 "layout": conventions.layout()},
        "loss": config.loss.name,
        "t": float(np.exp(params["t_log"])),
        "b": float(params["b"]) if "b" in params else 0.0,
        # The run's full config, so `contrastive-jax eval --export` runs the same evals.
        "train_config": json.loads(json.dumps(config.to_dict(), default=str)),
    }


def _write_weights(fmt: str, flat: dict[str, np.ndarray], out_dir: str) -> None:
    path = os.path.join(out_dir, WEIGHT_FILES[fmt])
    if fmt == "npz":
        np.savez(path, **flat)
    else:
        from safetensors.numpy import save_file

        # safetensors has no 0-d tensors: scalars (t_log, b) are stored as [1] and named in
        # the metadata so loading restores their shape exactly.
        scalars = ",".join(k for k, v in flat.items() if v.ndim == 0)
        save_file({k: np.ascontiguousarray(v).reshape(v.shape or (1,)) for k, v in flat.items()},
                  path, metadata={"format": "contrastive_jax", "scalars": scalars})


# The card of each format, written last to an object store: a reader (`spec_kind`, the
# importers) sees an export there only once its card exists, i.e. once every file is up.
CARD_FILES = (CONFIG_FILE, "contrastive_jax_export.json")


def write_atomically(out: str, overwrite: bool, fill: Callable[[str], None]) -> str:
    """Runs `fill(tmp_dir)` and moves the result to `out`: never a half-written export.
    On an object store (no rename) the files are staged in the local cache and uploaded,
    the card last."""
    out = paths.absolute(out)
    paths.check_reachable(out, "--out")
    if paths.exists(out) and not overwrite:
        raise UserError(f"{out} already exists; pass --overwrite to replace it")
    if paths.is_url(out):
        return _upload_export(out, fill)
    parent = os.path.dirname(out)
    os.makedirs(parent, exist_ok=True)
    tmp = out + ".tmp-export"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    try:
        fill(tmp)
        if os.path.exists(out):
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def _upload_export(out: str, fill: Callable[[str], None]) -> str:
    staging = tempfile.mkdtemp(dir=paths.cache_dir("exports"))
    try:
        fill(staging)
        if paths.exists(out):  # --overwrite: the old export goes first, its card with it
            paths.rmtree(out)
        files = paths.files_under(staging)
        for path in sorted(files, key=lambda f: os.path.basename(f) in CARD_FILES):
            paths.copy(path, paths.join(out, os.path.relpath(path, staging)))
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out


def export_weights(fmt: str, config: Any, params: dict, step: int, tokenizer_file: str,
                   out: str, *, overwrite: bool = False) -> str:
    """Writes an npz or safetensors export of restored weights (`params` at `step` of a run
    with `config`, whose tokenizer is `tokenizer_file`) to `out`."""
    card = export_config(config, params, step)
    card["weights"] = WEIGHT_FILES[fmt]

    def fill(tmp: str) -> None:
        _write_weights(fmt, flatten(params), tmp)
        paths.copy(tokenizer_file, os.path.join(tmp, TOKENIZER_FILE))
        with open(os.path.join(tmp, CONFIG_FILE), "w", encoding="utf-8") as f:
            json.dump(card, f, indent=2, sort_keys=True)

    return write_atomically(out, overwrite, fill)


def _read_weights(path: str) -> dict[str, np.ndarray]:
    if not paths.isfile(path):
        raise InputNotFoundError(f"missing weights file {path}")
    try:
        if path.endswith(".npz"):
            with np.load(io.BytesIO(paths.read_bytes(path)), allow_pickle=False) as f:
                return {k: f[k] for k in f.files}
        if paths.is_url(path):  # safetensors maps local files only: parse the bytes
            return _safetensors_bytes(paths.read_bytes(path))
        from safetensors import safe_open

        with safe_open(path, framework="numpy") as f:
            scalars = set(filter(None, (f.metadata() or {}).get("scalars", "").split(",")))
            return {k: f.get_tensor(k).reshape(()) if k in scalars else f.get_tensor(k)
                    for k in f.keys()}
    except Exception as e:  # noqa: BLE001 - truncated/corrupt files of either kind
        raise DataError(f"cannot read {path} (truncated or not a weights file): "
                        f"{type(e).__name__}: {str(e).splitlines()[0][:120]}") from e


def _safetensors_bytes(data: bytes) -> dict[str, np.ndarray]:
    import struct

    from safetensors.numpy import load

    (size,) = struct.unpack("<Q", data[:8])
    metadata = json.loads(data[8:8 + size]).get("__metadata__") or {}
    scalars = set(filter(None, metadata.get("scalars", "").split(",")))
    return {k: v.reshape(()) if k in scalars else v for k, v in load(data).items()}


def check_params(model_config: Any, params: dict) -> None:
    """Every expected param present with its shape, nothing extra; else one-line ValueError."""
    from contrastive_jax.models.state import ModelDef

    abstract = jax.eval_shape(lambda: ModelDef.init(model_config, jax.random.key(0))[0])
    want = {k: tuple(v.shape) for k, v in _flatten_abstract(abstract).items()}
    have = {k: tuple(v.shape) for k, v in flatten(params).items()}
    missing, extra = sorted(set(want) - set(have)), sorted(set(have) - set(want))
    if missing or extra:
        raise DataError(f"weights do not fit the model config: missing {missing[:3]}, "
                        f"unexpected {extra[:3]}")
    bad = [k for k in want if want[k] != have[k]]
    if bad:
        raise DataError(f"weights do not fit the model config: {bad[0]} has shape "
                        f"{have[bad[0]]}, expected {want[bad[0]]}")


def _flatten_abstract(tree: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_flatten_abstract(value, f"{prefix}{key}/"))
        else:
            out[f"{prefix}{key}"] = value
    return out


def card_conventions(card: dict[str, Any]) -> TextConventions:
    """The text conventions an export card records (old cards: pad 0, sticky EOS)."""
    return TextConventions.from_dict(card.get("text") or {})


def load_exported(export_dir: str) -> tuple[dict[str, Any], dict[str, Any], Tokenizer]:
    """(export config, nested params, tokenizer) of an npz/safetensors export directory;
    the tokenizer encodes by the card's text conventions."""
    from contrastive_jax.models import complete_config

    card_path = paths.join(export_dir, CONFIG_FILE)
    if not paths.isfile(card_path):
        raise InputNotFoundError(f"{export_dir} is not an export directory: no {CONFIG_FILE}")
    card = read_json(card_path, "export config")
    if card.get("weights") not in WEIGHT_FILES.values():
        raise DataError(f"{card_path}: 'weights' must be one of {sorted(WEIGHT_FILES.values())}")
    for key, kind in (("model", dict), ("text", dict), ("train_config", dict), ("step", int)):
        field(card, key, card_path, kind)  # a key a damaged card lost: one line, not KeyError
    params = unflatten(_read_weights(paths.join(export_dir, card["weights"])))
    check_params(complete_config(card["model"]), params)
    tok_path = paths.join(export_dir, field(card["text"], "tokenizer", card_path, str))
    if not paths.isfile(tok_path):
        raise InputNotFoundError(f"missing tokenizer file {tok_path}")
    from contrastive_jax.data.tokenizer import Tokenizer

    return card, params, Tokenizer(tok_path, card_conventions(card))
