"""Import big_vision two_towers (SigLIP / LiT / CLIP-style) `.npz` checkpoints.

big_vision saves flattened params with '/'-joined names, e.g.
    params/img/embedding/kernel                                   [p, p, C, width]
    params/img/Transformer/encoderblock_0/MultiHeadDotProductAttention_0/query/kernel
    params/img/MAPHead_0/probe, params/img/head/kernel
    params/txt/Embed_0/embedding, params/txt/pos_embedding, params/txt/Encoder_0/...
    params/t (log temperature), params/b
Flax linen and our NNX modules store every tensor in the same layout, so import is a pure
renaming (plus unstacking `scan`ned encoder blocks). The model config is read off the shapes.
SigLIP 2's NaFlex image towers (big_vision/models/proj/image_text/naflex_vit.py) share these
names; their `embedding` is a Dense [p*p*C, width] over patches and their `pos_embedding` a
[g, g, width] table: they import as `model.image.naflex=True` (models/naflex.py).
Text towers become `text.pool="final"`: big_vision's text transformer has no pad mask and
pools the final position, so the pad id changes every text embedding. Its SigLIP configs
tokenise with `tokenize(max_len=..., eos="sticky", pad_value=1)` and the op's default
`lower=True` (`tf.strings.lower`, no encoding: A-Z only), see big_vision/pp/ops_text.py and
configs/proj/image_text/common.py; `text_conventions` gives those as our conventions.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from contrastive_jax import paths
from contrastive_jax.data.text_conventions import EOS_ID, TextConventions
from contrastive_jax.errors import DataError, InputNotFoundError
from contrastive_jax.export.flat import unflatten

if TYPE_CHECKING:  # the tokenizer loads TensorFlow; only big_vision_model needs it
    from contrastive_jax.data.tokenizer import Tokenizer

_BLOCK_PARTS = {"LayerNorm_0": "ln1", "LayerNorm_1": "ln2", "MultiHeadDotProductAttention_0":
                "attn", "MlpBlock_0": "mlp", "Dense_0": "fc1", "Dense_1": "fc2"}
_MAP_PARTS = {"MultiHeadDotProductAttention_0": "attn", "LayerNorm_0": "ln", "MlpBlock_0": "mlp",
              "Dense_0": "fc1", "Dense_1": "fc2"}
_ENCODERS = {"img": "Transformer", "txt": "Encoder_0"}
# big_vision SigLIP's tokenize(eos="sticky", pad_value=1, lower=True): pad with EOS's id.
BIG_VISION_TEXT = {"pad_id": EOS_ID, "eos": "sticky", "lowercase": "ascii"}


def _rename(name: str) -> str:
    """One big_vision name (without `params/`) -> our flat name; ValueError if unknown."""
    parts = name.split("/")
    tower, rest = parts[0], parts[1:]
    if tower in ("t", "b") and not rest:
        return "t_log" if tower == "t" else "b"
    if tower not in _ENCODERS or not rest:
        raise DataError(f"not a big_vision two_towers parameter: {name!r}")
    if rest[0] == "head":
        return "/".join([f"{tower}_head", *rest[1:]])
    if rest[0] == _ENCODERS[tower]:
        m = re.fullmatch(r"encoderblock_(\d+)", rest[1])
        if m:
            inner = [_BLOCK_PARTS.get(p, p) for p in rest[2:]]
            return "/".join([tower, "encoder", "blocks", m.group(1), *inner])
        if rest[1] == "encoder_norm":
            return "/".join([tower, "encoder", *rest[1:]])
    if tower == "img" and rest[0] == "MAPHead_0":
        return "/".join(["img", "map_head", *[_MAP_PARTS.get(p, p) for p in rest[1:]]])
    if tower == "txt" and rest[0] == "Embed_0":
        return "/".join(["txt", "embedding", *rest[1:]])
    if rest[0] in ("embedding", "pos_embedding", "cls"):
        return "/".join([tower, *rest])
    raise DataError(f"unsupported big_vision parameter {name!r}")


def _unstack_scanned(flat: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """`scan=True` checkpoints hold one `encoderblock` with a leading depth axis."""
    out = {}
    for name, value in flat.items():
        m = re.fullmatch(r"(.*?/(?:Transformer|Encoder_0))/encoderblock/(.*)", name)
        if not m:
            out[name] = value
            continue
        for i, layer in enumerate(value):
            out[f"{m.group(1)}/encoderblock_{i}/{m.group(2)}"] = layer
    return out


def convert(flat_bv: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """big_vision flat names (with or without `params/`) -> our flat names, same arrays."""
    stripped = {k.removeprefix("params/"): np.asarray(v) for k, v in flat_bv.items()}
    return {_rename(k): v for k, v in _unstack_scanned(stripped).items()}


def _tower_size(flat: dict[str, np.ndarray], tower: str) -> dict[str, int]:
    blocks = {int(k.split("/")[3]) for k in flat if k.startswith(f"{tower}/encoder/blocks/")}
    if not blocks or blocks != set(range(len(blocks))):
        raise DataError(f"big_vision checkpoint has no complete {tower} encoder blocks")
    query = flat[f"{tower}/encoder/blocks/0/attn/query/kernel"]
    return {"width": int(query.shape[0]), "depth": len(blocks), "num_heads": int(query.shape[1]),
            "mlp_dim": int(flat[f"{tower}/encoder/blocks/0/mlp/fc1/kernel"].shape[1])}


def _naflex_patch(inputs: int) -> tuple[int, int]:
    """(patch, channels) of a NaFlex patch Dense with `inputs` = p*p*C rows: C is 3 when
    inputs/3 is a square, else 1 (3 p^2 is never a square, so the two cannot be confused)."""
    for channels in (3, 1):
        patch = math.isqrt(inputs // channels)
        if inputs % channels == 0 and patch * patch * channels == inputs:
            return patch, channels
    raise DataError(f"NaFlex patch embedding with {inputs} inputs is not p*p*3 or p*p*1")


def model_config_from_shapes(flat: dict[str, np.ndarray]) -> dict[str, Any]:
    """Our two_tower model config that these (converted) params fit; a NaFlex image tower's
    [g, g, width] position table is flattened to ours ([1, g*g, width]) in place."""
    kernel = flat["img/embedding/kernel"]  # [p, p, C, width]; NaFlex: [p*p*C, width]
    naflex = kernel.ndim == 2
    if naflex:
        patch, channels = _naflex_patch(int(kernel.shape[0]))
    else:
        patch, channels = int(kernel.shape[0]), int(kernel.shape[2])
    if "img/pos_embedding" not in flat:
        raise DataError("big_vision image towers without learned position embeddings "
                        "(posemb='sincos2d') are ambiguous in size; not supported")
    if naflex:
        pos = flat["img/pos_embedding"]
        flat["img/pos_embedding"] = pos.reshape(1, -1, pos.shape[-1])
    n = flat["img/pos_embedding"].shape[1]
    side = math.isqrt(n)
    if side * side != n:
        raise DataError(f"non-square patch grid ({n} positions) is not supported")
    pool = "map" if "img/map_head/probe" in flat else "cls" if "img/cls" in flat else "gap"
    isize, tsize = _tower_size(flat, "img"), _tower_size(flat, "txt")
    heads = {t: f"{t}_head/kernel" in flat for t in ("img", "txt")}
    dims = {int(flat[f"{t}_head/kernel"].shape[1]) for t in heads if heads[t]}
    dims |= {s["width"] for t, s in (("img", isize), ("txt", tsize)) if not heads[t]}
    if len(dims) != 1:
        raise DataError(f"image and text embeddings differ in size ({sorted(dims)})")
    vocab, width = flat["txt/embedding/embedding"].shape
    return {
        "name": "two_tower", "embed_dim": dims.pop(),
        "temperature_init": float(np.exp(flat["t_log"])),
        "bias_init": float(flat["b"]) if "b" in flat else None,
        "image": {**isize, "variant": None, "patch_size": patch, "image_size": side * patch,
                  "channels": channels, "pool": pool, "posemb": "learn", "head": heads["img"],
                  **({"naflex": True} if naflex else {})},
        "text": {**tsize, "variant": None, "vocab_size": int(vocab),
                 "max_len": int(flat["txt/pos_embedding"].shape[1]), "pool": "final",
                 "head": heads["txt"]},
    }


def load_big_vision(path: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(model config, nested params) of a big_vision two_towers `.npz` checkpoint."""
    from contrastive_jax.export.native import _read_weights, check_params
    from contrastive_jax.models import complete_config

    if not paths.isfile(path):
        raise InputNotFoundError(f"big_vision checkpoint not found: {path}")
    flat = convert(_read_weights(path))
    for needed in ("t_log", "img/embedding/kernel", "txt/embedding/embedding",
                   "txt/pos_embedding"):
        if needed not in flat:
            raise DataError(f"{path} is not a big_vision two_towers checkpoint "
                            f"(no {needed!r})")
    flat = {k: v.reshape(()) if k in ("t_log", "b") else v for k, v in flat.items()}
    model = model_config_from_shapes(flat)
    params = unflatten(flat)
    check_params(complete_config(model), params)
    return model, params


def text_conventions(model: dict[str, Any]) -> TextConventions:
    """How big_vision's SigLIP text towers read text, at the checkpoint's max_len (the
    length of its text position embedding)."""
    return TextConventions(**BIG_VISION_TEXT, max_len=int(model["text"]["max_len"]))


def big_vision_model(path: str, tokenizer_path: str, config: Any,
                     overrides: Sequence[str] = ()) -> tuple[dict[str, Any], Tokenizer]:
    """(params, tokenizer) of a big_vision `.npz`, made the model of `config` (in place):
    `config.model` from the checkpoint's shapes, `config.data`'s text conventions from
    `text_conventions`, then `key=value` `overrides` (so `data.pad_id=0` etc. win). The
    tokenizer encodes by the resulting conventions."""
    from contrastive_jax.config import apply_overrides
    from contrastive_jax.data.text_conventions import for_model, use_conventions
    from contrastive_jax.data.tokenizer import Tokenizer
    from contrastive_jax.models import complete_config

    model, params = load_big_vision(path)
    config.model = complete_config(model)
    use_conventions(config, text_conventions(model))
    apply_overrides(config, overrides)
    return params, Tokenizer(tokenizer_path, for_model(config))
