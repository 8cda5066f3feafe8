"""What SiglipModel and CLIPModel share: our tensors in torch's layout, tower configs.

Used by export/hf.py (SigLIP) and export/hf_clip.py (CLIP); names follow transformers'.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from contrastive_jax.models.layer_stack import unstack_layers
from contrastive_jax.models.sizes import resolve_size


def shared_unsupported(model: Any) -> list[str]:
    """What neither transformers target (SiglipModel, CLIPModel) can compute exactly."""
    reasons = []
    if model.name != "two_tower":
        reasons.append(f"model {model.name!r} (only two_tower)")
    if model.param_dtype != "float32":
        reasons.append(f"param_dtype {model.param_dtype}")
    size = model.image.image_size
    if isinstance(size, list | tuple) and len(set(size)) > 1:
        reasons.append(f"non-square image_size {size}")
    return reasons


def linear(kernel: np.ndarray, bias: np.ndarray) -> dict[str, np.ndarray]:
    """Our [in, ...out] kernel (MHA q/k/v: [in, H, hd]) -> torch Linear [out, in]."""
    return {"weight": kernel.reshape(kernel.shape[0], -1).T, "bias": bias.reshape(-1)}


def attention(p: dict) -> dict[str, np.ndarray]:
    out = {}
    for ours, theirs in (("query", "q_proj"), ("key", "k_proj"), ("value", "v_proj")):
        for k, v in linear(p[ours]["kernel"], p[ours]["bias"]).items():
            out[f"{theirs}.{k}"] = v
    kernel = p["out"]["kernel"]  # [H, hd, width]
    out["out_proj.weight"] = kernel.reshape(-1, kernel.shape[-1]).T
    out["out_proj.bias"] = p["out"]["bias"]
    return out


def norm(p: dict) -> dict[str, np.ndarray]:
    return {"weight": p["scale"], "bias": p["bias"]}


def mlp(p: dict) -> dict[str, np.ndarray]:
    out = {}
    for fc in ("fc1", "fc2"):
        for k, v in linear(p[fc]["kernel"], p[fc]["bias"]).items():
            out[f"{fc}.{k}"] = v
    return out


def prefixed(prefix: str, tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {f"{prefix}.{k}": v for k, v in tensors.items()}


def encoder(prefix: str, p: dict) -> dict[str, np.ndarray]:
    out = {}
    blocks = unstack_layers({"blocks": p["blocks"]})["blocks"]  # scan_layers: per layer
    for i in sorted(blocks, key=int):
        block, pre = blocks[i], f"{prefix}.layers.{i}"
        out |= prefixed(f"{pre}.layer_norm1", norm(block["ln1"]))
        out |= prefixed(f"{pre}.self_attn", attention(block["attn"]))
        out |= prefixed(f"{pre}.layer_norm2", norm(block["ln2"]))
        out |= prefixed(f"{pre}.mlp", mlp(block["mlp"]))
    return out


def hf_towers(model: Any, **common: Any) -> tuple[dict, dict]:
    """(text, vision) config kwargs shared by SiglipConfig and CLIPConfig."""
    isize = resolve_size(model.image, tower="image", with_patch=True)
    tsize = resolve_size(model.text, tower="text", with_patch=False)
    size = model.image.image_size
    size = size if isinstance(size, int) else int(size[0])

    def tower(s: dict) -> dict:
        return dict(hidden_size=s["width"], intermediate_size=s["mlp_dim"],
                    num_hidden_layers=s["depth"], num_attention_heads=s["num_heads"],
                    hidden_act="gelu_pytorch_tanh", layer_norm_eps=1e-6, **common)

    text = dict(tower(tsize), vocab_size=model.text.vocab_size,
                max_position_embeddings=model.text.max_len, pad_token_id=0, eos_token_id=1,
                bos_token_id=None)
    vision = dict(tower(isize), num_channels=model.image.channels, image_size=size,
                  patch_size=isize["patch_size"])
    return text, vision
