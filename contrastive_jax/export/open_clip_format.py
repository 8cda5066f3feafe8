"""open_clip export: a directory that `open_clip.create_model_from_pretrained('local-dir:DIR')`
and `open_clip.get_tokenizer('local-dir:DIR')` load.

The image tower is open_clip's own VisionTransformer when it is CLIP's (class-token pooling,
`pool_type="tok"`, after a pre-encoder LayerNorm `ln_pre`, the encoder's final LayerNorm as
`ln_post`, a projection without bias), and a timm tower otherwise: MAP- or GAP-pooled towers
(SigLIP's) have no class token, which open_clip's VisionTransformer always prepends. Such an
export carries a timm model folder (`timm_vision/config.json`, see export/timm_vit.py) that
`vision_cfg.timm_model_name` names as `local-dir:` by absolute path (open_clip 3.3.0 hands
timm the name as it is): a moved export needs that path updated, and says so in timm's
"Config file not found" error.
  text:  causal attention pooled at the EOS (`pool_type="eos"`, eos_id 1), or bidirectional
         pooled at the final position without a pad mask (`no_causal_mask`, `"last"`);
  both:  tanh GELU and LayerNorm eps 1e-6 (open_clip's `act_kwargs` / `norm_kwargs`, timm's
         `act_layer="gelu_tanh"`); a logit bias b when the model has one (`init_logit_bias`).
Weights: `open_clip_model.safetensors` in open_clip's CLIP state-dict layout. Tokenizer: the
transformers T5Tokenizer of the hf export (open_clip's `HFTokenizer`, read from DIR itself).
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np

from contrastive_jax import paths
from contrastive_jax.errors import UserError
from contrastive_jax.export.hf import save_tokenizer, tokenizer_unsupported
from contrastive_jax.export.hf_layers import (
    class_token_embeddings,
    norm,
    packed_attention,
    prefixed,
    shared_unsupported,
)
from contrastive_jax.export.native import TOKENIZER_FILE, export_config, write_atomically
from contrastive_jax.export.timm_vit import (
    TIMM_DIR,
    timm_config,
    timm_pool,
    timm_state_dict,
    timm_unsupported,
)
from contrastive_jax.models import complete_config
from contrastive_jax.models.layer_stack import unstack_layers
from contrastive_jax.models.sizes import resolve_size

CONFIG_FILE = "open_clip_config.json"
WEIGHTS_FILE = "open_clip_model.safetensors"


def open_clip_unsupported(model: Any) -> list[str]:
    """Why `model` (a complete model config) cannot be an exact open_clip CLIP; [] if it can."""
    img, txt = model.image, model.text
    reasons = shared_unsupported(model)
    if img.pool != "cls":  # a timm tower
        reasons += timm_unsupported(img)
    elif not img.pre_norm:
        reasons.append("image.pre_norm=False (open_clip's VisionTransformer has ln_pre)")
    if (txt.causal, txt.pool) not in ((True, "last"), (False, "final")):
        reasons.append(f"text.causal={txt.causal}, text.pool={txt.pool!r} (open_clip: causal "
                       "pooled at the EOS, or bidirectional pooled at the final position "
                       "without pad masking: text.pool='final')")
    if img.pool == "cls" and model.proj_bias and "img_head" in model_heads(model):
        reasons.append("proj_bias=True on the image projection (open_clip's VisionTransformer "
                       "has no bias)")
    return reasons


def _resblocks(prefix: str, p: dict) -> dict[str, np.ndarray]:
    out = {}
    blocks = unstack_layers({"blocks": p["blocks"]})["blocks"]
    for i in sorted(blocks, key=int):
        block, pre = blocks[i], f"{prefix}.resblocks.{i}"
        out |= prefixed(f"{pre}.ln_1", norm(block["ln1"]))
        out |= prefixed(f"{pre}.attn", packed_attention(block["attn"]))
        out |= prefixed(f"{pre}.ln_2", norm(block["ln2"]))
        for ours, theirs in (("fc1", "c_fc"), ("fc2", "c_proj")):
            out[f"{pre}.mlp.{theirs}.weight"] = block["mlp"][ours]["kernel"].T
            out[f"{pre}.mlp.{theirs}.bias"] = block["mlp"][ours]["bias"]
    return out


def _projection(params: dict, name: str, width: int, embed_dim: int) -> dict:
    """open_clip's projections are [in, out] matrices used as x @ P (no head: identity)."""
    if name not in params:
        return {"": np.eye(width, embed_dim, dtype=np.float32)}
    head = params[name]
    if "bias" in head:  # text projection with bias: open_clip makes it an nn.Linear
        return {".weight": head["kernel"].T, ".bias": head["bias"]}
    return {"": head["kernel"]}


def open_clip_state_dict(params: dict, model: Any) -> dict[str, np.ndarray]:
    """Our nested params -> open_clip CLIP's state dict (numpy, float32)."""
    img, txt = params["img"], params["txt"]
    isize = resolve_size(model.image, tower="image", with_patch=True)
    tsize = resolve_size(model.text, tower="text", with_patch=False)
    if model.image.pool == "cls":
        kernel, cls, pos = class_token_embeddings(img, model)
        sd = {"visual.conv1.weight": kernel, "visual.class_embedding": cls,
              "visual.positional_embedding": pos}
        sd |= prefixed("visual.ln_pre", norm(img["pre_norm"]))
        sd |= _resblocks("visual.transformer", img["encoder"])
        sd |= prefixed("visual.ln_post", norm(img["encoder"]["encoder_norm"]))
        sd["visual.proj"] = _projection(params, "img_head", isize["width"],
                                        model.embed_dim)[""]
    else:  # open_clip's TimmModel: the trunk, then its head's Linear (`timm_proj`)
        sd = timm_state_dict(img, model.image, "visual.trunk")
        head = params.get("img_head")
        if head is not None:
            sd["visual.head.proj.weight"] = head["kernel"].T
            if "bias" in head:
                sd["visual.head.proj.bias"] = head["bias"]
    sd["token_embedding.weight"] = txt["embedding"]["embedding"]
    sd["positional_embedding"] = txt["pos_embedding"][0]
    sd |= _resblocks("transformer", txt["encoder"])
    sd |= prefixed("ln_final", norm(txt["encoder"]["encoder_norm"]))
    for suffix, value in _projection(params, "txt_head", tsize["width"],
                                     model.embed_dim).items():
        sd[f"text_projection{suffix}"] = value
    sd["logit_scale"] = np.reshape(params["t_log"], ())
    if "b" in params:
        sd["logit_bias"] = np.reshape(params["b"], ())
    return {k: np.array(v, dtype=np.float32, order="C") for k, v in sd.items()}


def open_clip_config(model: Any, card: dict, timm_dir: str = "") -> dict[str, Any]:
    """open_clip_config.json: `model_cfg` (the architecture) and `preprocess_cfg`;
    `timm_dir`: where a timm image tower's folder will be (absolute)."""
    isize = resolve_size(model.image, tower="image", with_patch=True)
    tsize = resolve_size(model.text, tower="text", with_patch=False)
    size = card["image"]["size"]
    common = {"act_kwargs": {"approximate": "tanh"}, "norm_kwargs": {"eps": 1e-6}}
    if model.image.pool == "cls":
        vision = {"image_size": size, "patch_size": isize["patch_size"],
                  "width": isize["width"], "layers": isize["depth"],
                  "head_width": isize["width"] // isize["num_heads"],
                  "mlp_ratio": isize["mlp_dim"] / isize["width"], "pool_type": "tok", **common}
    else:
        head = "img_head" in model_heads(model)
        vision = {"image_size": size, "timm_model_name": f"local-dir:{timm_dir}",
                  "timm_model_pretrained": False, "timm_pool": timm_pool(model.image.pool),
                  "timm_proj": "linear" if head else "none",
                  "timm_proj_bias": head and bool(model.proj_bias)}
    text = {"context_length": model.text.max_len, "vocab_size": model.text.vocab_size,
            "width": tsize["width"], "heads": tsize["num_heads"], "layers": tsize["depth"],
            "mlp_ratio": tsize["mlp_dim"] / tsize["width"],
            "no_causal_mask": not model.text.causal,
            "pool_type": "eos" if model.text.causal else "last", "eos_id": 1, "pad_id": 0,
            "proj_bias": "txt_head" in model_heads(model) and bool(model.proj_bias),
            # Any name selects open_clip's HFTokenizer; for local-dir it reads DIR itself.
            "hf_tokenizer_name": "contrastive_jax-export", **common}
    model_cfg = {"embed_dim": model.embed_dim, "quick_gelu": False, "vision_cfg": vision,
                 "text_cfg": text}
    if model.bias_init is not None:
        model_cfg["init_logit_bias"] = float(card["b"])
    lo, hi = card["image"]["value_range"]
    # ToTensor gives x/255; Normalize (x - mean) / std then maps it to lo + x/255 * (hi - lo).
    # "squash" resizes to the model's square size without a crop, as our eval pipeline does.
    preprocess = {"size": [size, size], "mode": "RGB", "mean": [-lo / (hi - lo)] * 3,
                  "std": [1.0 / (hi - lo)] * 3, "interpolation": "bilinear",
                  "resize_mode": "squash", "fill_color": 0}
    return {"model_cfg": model_cfg, "preprocess_cfg": preprocess}


def model_heads(model: Any) -> set[str]:
    """Which projection heads the model has (`img_head`, `txt_head`)."""
    heads = set()
    for name, tower, patch in (("img_head", model.image, True), ("txt_head", model.text, False)):
        width = resolve_size(tower, tower="image" if patch else "text", with_patch=patch)["width"]
        if tower.head or width != model.embed_dim:
            heads.add(name)
    return heads


def export_open_clip(config: Any, params: dict, step: int, tokenizer_file: str, out: str, *,
                     overwrite: bool = False) -> str:
    """Writes restored weights as an open_clip `local-dir:` model directory."""
    model = complete_config(config.model.to_dict())
    reasons = open_clip_unsupported(model)
    if reasons:
        raise UserError("cannot export exactly as an open_clip CLIP: " + "; ".join(reasons))
    text_reasons = tokenizer_unsupported(config, tokenizer_file)
    if text_reasons:
        raise UserError("cannot export a tokenizer that tokenises as this model was trained: "
                        + "; ".join(text_reasons))
    from safetensors.numpy import save_file

    card = export_config(config, params, step)
    tensors = open_clip_state_dict(params, model)
    timm_dir = paths.join(paths.absolute(out), TIMM_DIR)  # the path after the rename

    def fill(tmp: str) -> None:
        save_file(tensors, os.path.join(tmp, WEIGHTS_FILE))
        with open(os.path.join(tmp, CONFIG_FILE), "w", encoding="utf-8") as f:
            json.dump(open_clip_config(model, card, timm_dir), f, indent=2)
        if model.image.pool != "cls":
            os.makedirs(os.path.join(tmp, TIMM_DIR))
            with open(os.path.join(tmp, TIMM_DIR, "config.json"), "w", encoding="utf-8") as f:
                json.dump(timm_config(model.image, card["image"]["value_range"]), f, indent=2)
        paths.copy(tokenizer_file, os.path.join(tmp, TOKENIZER_FILE))
        save_tokenizer(tmp, card, masked=model.text.causal)
        with open(os.path.join(tmp, "contrastive_jax_export.json"), "w",
                  encoding="utf-8") as f:
            json.dump(card, f, indent=2, sort_keys=True)

    return write_atomically(out, overwrite, fill)
