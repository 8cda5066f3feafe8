"""Our ViT image tower as a timm VisionTransformer and back, for open_clip's timm towers.

open_clip's own VisionTransformer always has a class token, so a MAP- or GAP-pooled tower
(SigLIP's) goes to open_clip as a timm tower (`vision_cfg.timm_model_name`). open_clip 3.3.0
passes no size arguments to timm, but timm (>= 1.0.16) builds a model from a folder's
`config.json` (`local-dir:DIR`: an `architecture` and the `model_args` it is called with), so
the export carries such a folder sized like our tower:
  `class_token=False`, learned `pos_embed` on the patches, `global_pool` "map" (timm's
  AttentionPoolLatent: latent query, attention, then x + MLP(LN(x)): our MAPHead) or "avg"
  with `fc_norm=False` (the final LayerNorm before the mean: our GAP), tanh GELU
  (`act_layer="gelu_tanh"`), timm's LayerNorm (eps 1e-6), qkv biases.
With `pre_norm` timm's patch embedding has no bias: ours is folded into the position
embeddings (the same sum, added before the LayerNorm).
"""

from __future__ import annotations

import posixpath
from typing import Any

import numpy as np

from contrastive_jax import paths
from contrastive_jax.errors import DataError
from contrastive_jax.export.hf_layers import (
    attention,
    mlp,
    norm,
    packed_attention,
    patch_position_embeddings,
    prefixed,
    read_linear,
    read_norm,
    rgb_patch_kernel,
)
from contrastive_jax.models.layer_stack import unstack_layers
from contrastive_jax.models.sizes import resolve_size

TIMM_DIR = "timm_vision"  # the export's timm model folder (its config.json)
# A registered timm ViT entrypoint; every size comes from `model_args`, which override it.
ARCHITECTURE = "vit_base_patch16_siglip_224"
_POOLS = {"map": "map", "gap": "avg"}


def timm_unsupported(image: Any) -> list[str]:
    """Why our image tower config cannot be a timm ViT of this layout; [] if it can."""
    if image.pool not in _POOLS:
        return [f"image.pool={image.pool!r} (a timm tower here pools with 'map' or 'gap'; "
                "a class token goes through open_clip's own VisionTransformer)"]
    return []


def timm_pool(pool: str) -> str:
    """timm's name ("map", "avg") for our pooling ("map", "gap")."""
    return _POOLS[pool]


def timm_config(image: Any, value_range: tuple[float, float]) -> dict[str, Any]:
    """The timm folder's config.json: what `timm.create_model('local-dir:DIR')` builds."""
    size = resolve_size(image, tower="image", with_patch=True)
    px = image.image_size if isinstance(image.image_size, int) else int(image.image_size[0])
    lo, hi = value_range
    model_args = {
        "img_size": px, "patch_size": size["patch_size"], "in_chans": 3,
        "embed_dim": size["width"], "depth": size["depth"], "num_heads": size["num_heads"],
        "mlp_ratio": size["mlp_dim"] / size["width"], "class_token": False,
        "global_pool": timm_pool(image.pool), "fc_norm": False, "pre_norm": bool(image.pre_norm),
        "act_layer": "gelu_tanh", "num_classes": 0,
    }
    pretrained_cfg = {"input_size": [3, px, px], "num_classes": 0, "fixed_input_size": True,
                      "interpolation": "bilinear", "crop_pct": 1.0,
                      "mean": [-lo / (hi - lo)] * 3, "std": [1.0 / (hi - lo)] * 3}
    return {"architecture": ARCHITECTURE, "num_features": size["width"],
            "model_args": model_args, "pretrained_cfg": pretrained_cfg}


def timm_state_dict(img: dict, image: Any, prefix: str) -> dict[str, np.ndarray]:
    """Our image tower params -> timm VisionTransformer's state dict under `prefix`."""
    pos = patch_position_embeddings(img, image)
    bias = img["embedding"]["bias"]
    sd = {f"{prefix}.patch_embed.proj.weight": rgb_patch_kernel(img["embedding"]["kernel"])}
    if image.pre_norm:  # timm's patch embedding has no bias then: fold it into the positions
        pos = pos + bias[None, :]
        sd |= prefixed(f"{prefix}.norm_pre", norm(img["pre_norm"]))
    else:
        sd[f"{prefix}.patch_embed.proj.bias"] = bias
    sd[f"{prefix}.pos_embed"] = pos[None]
    blocks = unstack_layers({"blocks": img["encoder"]["blocks"]})["blocks"]
    for i in sorted(blocks, key=int):
        block, pre = blocks[i], f"{prefix}.blocks.{i}"
        packed = packed_attention(block["attn"])
        sd |= prefixed(f"{pre}.norm1", norm(block["ln1"]))
        sd[f"{pre}.attn.qkv.weight"] = packed["in_proj_weight"]
        sd[f"{pre}.attn.qkv.bias"] = packed["in_proj_bias"]
        sd[f"{pre}.attn.proj.weight"] = packed["out_proj.weight"]
        sd[f"{pre}.attn.proj.bias"] = packed["out_proj.bias"]
        sd |= prefixed(f"{pre}.norm2", norm(block["ln2"]))
        sd |= prefixed(f"{pre}.mlp", mlp(block["mlp"]))
    sd |= prefixed(f"{prefix}.norm", norm(img["encoder"]["encoder_norm"]))
    if image.pool == "map":
        head, pool = img["map_head"], f"{prefix}.attn_pool"
        attn = attention(head["attn"])
        sd[f"{pool}.latent"] = np.reshape(head["probe"], (1, 1, -1))
        sd[f"{pool}.q.weight"], sd[f"{pool}.q.bias"] = attn["q_proj.weight"], attn["q_proj.bias"]
        sd[f"{pool}.kv.weight"] = np.concatenate([attn["k_proj.weight"], attn["v_proj.weight"]])
        sd[f"{pool}.kv.bias"] = np.concatenate([attn["k_proj.bias"], attn["v_proj.bias"]])
        sd[f"{pool}.proj.weight"] = attn["out_proj.weight"]
        sd[f"{pool}.proj.bias"] = attn["out_proj.bias"]
        sd |= prefixed(f"{pool}.norm", norm(head["ln"]))
        sd |= prefixed(f"{pool}.mlp", mlp(head["mlp"]))
    return sd


# What `read_timm_config` accepts in model_args: exactly what `timm_config` writes.
_ARGS = {"img_size", "patch_size", "in_chans", "embed_dim", "depth", "num_heads", "mlp_ratio",
         "class_token", "global_pool", "fc_norm", "pre_norm", "act_layer", "num_classes"}
_FIXED = {"class_token": False, "fc_norm": False, "act_layer": "gelu_tanh", "in_chans": 3}


def timm_folder(name: str, export_dir: str) -> str:
    """The folder of a `local-dir:` timm model name; if it is gone (the export was moved),
    the folder of that name inside `export_dir`."""
    folder = name.removeprefix("local-dir:")
    if paths.isdir(folder):
        return folder
    # normpath only for its last component: the name of the folder, local or a URL.
    return paths.join(export_dir, posixpath.basename(posixpath.normpath(folder)))


def read_timm_config(cfg: dict, where: str) -> dict[str, Any]:
    """Our image tower config from a timm folder's config.json written by `timm_config`."""
    args = cfg.get("model_args") or {}
    problems = [f"unexpected model_args key {k!r}" for k in sorted(set(args) - _ARGS)]
    problems += [f"model_args {k}={args[k]!r} (we compute {v!r})" for k, v in _FIXED.items()
                 if args.get(k, v) != v]
    pool = {v: k for k, v in _POOLS.items()}.get(args.get("global_pool"))
    if pool is None:
        problems.append(f"global_pool={args.get('global_pool')!r} (we read 'map' or 'avg')")
    problems += [f"no model_args {k!r}" for k in ("img_size", "embed_dim", "depth", "num_heads",
                                                   "mlp_ratio", "patch_size") if k not in args]
    if problems:
        raise DataError(f"{where}: not a timm ViT we compute exactly: " + "; ".join(problems))
    width = int(args["embed_dim"])
    return dict(variant=None, width=width, depth=int(args["depth"]),
                num_heads=int(args["num_heads"]), mlp_dim=int(round(width * args["mlp_ratio"])),
                patch_size=int(args["patch_size"]), image_size=int(args["img_size"]),
                channels=3, posemb="learn", pool=pool, pre_norm=bool(args.get("pre_norm")))


def read_timm_state_dict(sd: dict, prefix: str, image: dict) -> dict[str, np.ndarray]:
    """Inverse of `timm_state_dict`: flat '/'-joined names of our image tower ("img/...")."""
    conv = sd[f"{prefix}.patch_embed.proj.weight"]
    flat = {"img/embedding/kernel": conv.transpose(2, 3, 1, 0),
            "img/embedding/bias": sd.get(f"{prefix}.patch_embed.proj.bias",
                                         np.zeros(conv.shape[0], np.float32)),
            "img/pos_embedding": sd[f"{prefix}.pos_embed"]}
    if image["pre_norm"]:
        flat |= read_norm(sd, f"{prefix}.norm_pre", "img/pre_norm")
    for i in range(image["depth"]):
        pre, ours = f"{prefix}.blocks.{i}", f"img/encoder/blocks/{i}"
        flat |= read_norm(sd, f"{pre}.norm1", f"{ours}/ln1")
        flat |= _read_packed(sd, f"{pre}.attn.qkv", ("query", "key", "value"), f"{ours}/attn")
        flat |= read_linear(sd, f"{pre}.attn.proj", f"{ours}/attn/out")
        flat |= _read_mlp(sd, pre, "norm2", ours, "ln2")
    flat |= read_norm(sd, f"{prefix}.norm", "img/encoder/encoder_norm")
    if image["pool"] == "map":
        pool, ours = f"{prefix}.attn_pool", "img/map_head"
        flat[f"{ours}/probe"] = sd[f"{pool}.latent"]
        flat |= _read_packed(sd, f"{pool}.q", ("query",), f"{ours}/attn")
        flat |= _read_packed(sd, f"{pool}.kv", ("key", "value"), f"{ours}/attn")
        flat |= read_linear(sd, f"{pool}.proj", f"{ours}/attn/out")
        flat |= _read_mlp(sd, pool, "norm", ours, "ln")
    return flat


def _read_packed(sd: dict, prefix: str, names: tuple[str, ...], ours: str
                 ) -> dict[str, np.ndarray]:
    """A Linear whose outputs are `names`' projections one after another -> ours/<name>."""
    out = {}
    for name, w, b in zip(names, np.split(sd[f"{prefix}.weight"], len(names)),
                          np.split(sd[f"{prefix}.bias"], len(names)), strict=True):
        out[f"{ours}/{name}/kernel"], out[f"{ours}/{name}/bias"] = w.T, b
    return out


def _read_mlp(sd: dict, prefix: str, norm_name: str, ours: str, ln: str
              ) -> dict[str, np.ndarray]:
    """The LayerNorm before an MLP and the MLP (timm's `mlp.fc1`, `mlp.fc2`)."""
    out = read_norm(sd, f"{prefix}.{norm_name}", f"{ours}/{ln}")
    for fc in ("fc1", "fc2"):
        out |= read_linear(sd, f"{prefix}.mlp.{fc}", f"{ours}/mlp/{fc}")
    return out
