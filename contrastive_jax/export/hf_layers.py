"""Our tensors in torch's layouts and back (transformers, open_clip), tower configs.

Used by the hf and open_clip exports and imports; names follow transformers'.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from contrastive_jax.errors import DataError
from contrastive_jax.models.layer_stack import unstack_layers
from contrastive_jax.models.sizes import resolve_size
from contrastive_jax.models.transformer import posemb_sincos_2d
from contrastive_jax.objectives import objective_of


def shared_unsupported(model: Any) -> list[str]:
    """What neither transformers target (SiglipModel, CLIPModel) can compute exactly."""
    reasons = []
    refusal = objective_of(model.name).export_refusal
    if refusal is not None:
        reasons.append(f"model {model.name!r} ({refusal})")
    if model.param_dtype != "float32":
        reasons.append(f"param_dtype {model.param_dtype}")
    size = model.image.image_size
    if isinstance(size, list | tuple) and len(set(size)) > 1:
        reasons.append(f"non-square image_size {size}")
    if model.image.channels not in (1, 3):
        reasons.append(f"image.channels={model.image.channels} (RGB libraries: 1 or 3)")
    return reasons


def rgb_patch_kernel(kernel: np.ndarray) -> np.ndarray:
    """Our patch kernel [p, p, C, width] -> torch's conv weight [width, 3, p, p].

    Exported models read RGB: the libraries' processors and pipelines convert every image
    to RGB. A grey (C=1) model's kernel is split evenly across the three channels, which is
    exact for a grey image replicated to RGB: sum_c (w/3) x = w x.
    """
    if kernel.shape[2] == 1:
        kernel = np.repeat(kernel / 3.0, 3, axis=2)
    return kernel.transpose(3, 2, 0, 1)


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


def packed_attention(p: dict) -> dict[str, np.ndarray]:
    """As `attention`, in torch.nn.MultiheadAttention's layout: q, k, v packed in in_proj."""
    attn = attention(p)
    return {"in_proj_weight": np.concatenate([attn[f"{n}_proj.weight"] for n in "qkv"]),
            "in_proj_bias": np.concatenate([attn[f"{n}_proj.bias"] for n in "qkv"]),
            "out_proj.weight": attn["out_proj.weight"], "out_proj.bias": attn["out_proj.bias"]}


def patch_position_embeddings(img: dict, image: Any) -> np.ndarray:
    """The patches' position embeddings [grid^2, width]: learned ones, or the fixed sincos2d
    ones written out (libraries store them as learned)."""
    if image.posemb == "learn":
        return np.reshape(img["pos_embedding"], img["pos_embedding"].shape[-2:])
    isize = resolve_size(image, tower="image", with_patch=True)
    size = image.image_size
    grid = (size if isinstance(size, int) else int(size[0])) // isize["patch_size"]
    return posemb_sincos_2d(grid, grid, isize["width"])[0]


def class_token_embeddings(img: dict, model: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(conv weight, class embedding, position embeddings [1 + grid^2, width]) of a class-
    token image tower, in CLIP's layout. CLIP's patch embedding has no bias and its class
    token gets a position embedding, ours the reverse: the conv bias is folded into the patch
    position embeddings and the class position embedding is zero, which is the same sum.
    Fixed sincos2d position embeddings are stored as learned ones."""
    pos = patch_position_embeddings(img, model.image)
    patch_pos = pos + img["embedding"]["bias"][None, :]
    return (rgb_patch_kernel(img["embedding"]["kernel"]), img["cls"].reshape(-1),
            np.concatenate([np.zeros((1, pos.shape[1]), np.float32), patch_pos]))


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
                bos_token_id=None)  # our tokenizer's ids (sentencepiece: no BOS)
    vision = dict(tower(isize), num_channels=3, image_size=size,
                  patch_size=isize["patch_size"])
    return text, vision


# --- import: torch layouts back to ours (flat '/'-joined names; shapes fitted later) ---


def read_linear(sd: dict, prefix: str, ours: str) -> dict[str, np.ndarray]:
    """torch Linear `prefix` ([out, in]) -> our `ours/kernel` [in, out] (+ bias)."""
    out = {f"{ours}/kernel": sd[f"{prefix}.weight"].T}
    if f"{prefix}.bias" in sd:
        out[f"{ours}/bias"] = sd[f"{prefix}.bias"]
    return out


def read_norm(sd: dict, prefix: str, ours: str) -> dict[str, np.ndarray]:
    return {f"{ours}/scale": sd[f"{prefix}.weight"], f"{ours}/bias": sd[f"{prefix}.bias"]}


def read_attention(sd: dict, prefix: str, ours: str) -> dict[str, np.ndarray]:
    """q_proj / k_proj / v_proj / out_proj Linears, or nn.MultiheadAttention's packed
    in_proj, -> our attention (kernels [in, H*hd]; `fit_shapes` splits the heads)."""
    out = {}
    if f"{prefix}.in_proj_weight" in sd:
        weights = np.split(sd[f"{prefix}.in_proj_weight"], 3)
        biases = np.split(sd[f"{prefix}.in_proj_bias"], 3)
        for name, w, b in zip(("query", "key", "value"), weights, biases, strict=True):
            out[f"{ours}/{name}/kernel"], out[f"{ours}/{name}/bias"] = w.T, b
    else:
        for name, theirs in (("query", "q_proj"), ("key", "k_proj"), ("value", "v_proj")):
            out |= read_linear(sd, f"{prefix}.{theirs}", f"{ours}/{name}")
    return out | read_linear(sd, f"{prefix}.out_proj", f"{ours}/out")


# Each library's names for one block's parts, in our order: ln1, attn, ln2, fc1, fc2.
HF_BLOCK = ("layers", "layer_norm1", "self_attn", "layer_norm2", "mlp.fc1", "mlp.fc2")
OPEN_CLIP_BLOCK = ("resblocks", "ln_1", "attn", "ln_2", "mlp.c_fc", "mlp.c_proj")


def read_encoder(sd: dict, prefix: str, ours: str, depth: int,
                 names: tuple[str, ...] = HF_BLOCK) -> dict[str, np.ndarray]:
    """A library's `prefix.<layers>.i.*` blocks (`names`: HF_BLOCK, OPEN_CLIP_BLOCK) -> our
    `ours/blocks/i/*`."""
    layers, ln1, attn, ln2, fc1, fc2 = names
    out = {}
    for i in range(depth):
        pre, block = f"{prefix}.{layers}.{i}", f"{ours}/blocks/{i}"
        out |= read_norm(sd, f"{pre}.{ln1}", f"{block}/ln1")
        out |= read_attention(sd, f"{pre}.{attn}", f"{block}/attn")
        out |= read_norm(sd, f"{pre}.{ln2}", f"{block}/ln2")
        out |= read_linear(sd, f"{pre}.{fc1}", f"{block}/mlp/fc1")
        out |= read_linear(sd, f"{pre}.{fc2}", f"{block}/mlp/fc2")
    return out


def read_class_token_embeddings(conv: np.ndarray, cls: np.ndarray, pos: np.ndarray,
                                ours: str = "img") -> dict[str, np.ndarray]:
    """Inverse of `class_token_embeddings`: CLIP's class position embedding goes into our
    class token (which has none), the patch positions stay, and the conv has no bias."""
    return {f"{ours}/embedding/kernel": conv.transpose(2, 3, 1, 0),
            f"{ours}/embedding/bias": np.zeros(conv.shape[0], np.float32),
            f"{ours}/cls": cls + pos[0], f"{ours}/pos_embedding": pos[1:]}


def fit_shapes(flat: dict[str, np.ndarray], want: dict[str, tuple], source: str
               ) -> dict[str, np.ndarray]:
    """Reshapes each tensor to our shape (heads split, leading 1s); a missing, extra or
    mis-sized tensor is a one-line DataError naming it and `source`."""
    missing, extra = sorted(set(want) - set(flat)), sorted(set(flat) - set(want))
    if missing or extra:
        raise DataError(f"{source}: tensors do not fit the model its config describes: "
                        f"missing {missing[:3]}, unexpected {extra[:3]}")
    out = {}
    for name, shape in want.items():
        value = np.asarray(flat[name], np.float32)
        if value.size != int(np.prod(shape)):
            raise DataError(f"{source}: tensor for {name} has shape {value.shape}, the config "
                            f"needs {shape}")
        out[name] = np.array(value.reshape(shape), order="C")  # 0-d stays 0-d
    return out
