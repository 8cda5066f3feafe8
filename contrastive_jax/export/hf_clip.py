"""Hugging Face `transformers` export of a CLIP-architecture model as `CLIPModel`.

CLIPModel computes exactly what our two-tower model computes when (see `clip_unsupported`):
  image: class-token pooling (`image.pool="cls"`), a LayerNorm before the encoder
         (`image.pre_norm=True`: CLIP's pre_layrnorm); the encoder's final LayerNorm on the
         class token is CLIP's post_layernorm (embeddings: hf_layers.class_token_embeddings).
  text:  causal attention (`text.causal=True`) pooled at the EOS (`text.pool="last"`: our
         tokenizer's EOS, id 1, is the last non-pad token, which is where CLIPTextModel pools
         for eos_token_id=1); pads after the EOS cannot reach it through a causal mask.
  both:  projections without bias (`proj_bias=False`; no head when width == embed_dim is the
         identity), tanh GELU ("gelu_pytorch_tanh"), LayerNorm eps 1e-6, no logit bias
         (`bias_init=None`), logit_scale = log t.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from contrastive_jax.export.hf_layers import (
    class_token_embeddings,
    encoder,
    hf_towers,
    norm,
    prefixed,
    shared_unsupported,
)
from contrastive_jax.models.sizes import resolve_size


def clip_unsupported(model: Any) -> list[str]:
    """Why `model` (a complete model config) cannot be an exact CLIPModel; [] if it can."""
    img, txt = model.image, model.text
    reasons = shared_unsupported(model)
    if img.pool != "cls":
        reasons.append(f"image.pool={img.pool!r} (CLIPModel pools the class token)")
    if not img.pre_norm:
        reasons.append("image.pre_norm=False (CLIPModel has pre_layrnorm)")
    if not txt.causal or txt.pool != "last":
        reasons.append(f"text.causal={txt.causal}, text.pool={txt.pool!r} (CLIPModel: causal "
                       "attention pooled at the EOS, text.causal=True and text.pool='last')")
    if model.proj_bias:
        reasons.append("proj_bias=True (CLIPModel's projections have no bias)")
    if model.bias_init is not None:
        reasons.append("a logit bias b (CLIPModel has none: bias_init=None)")
    return reasons


def _projection(params: dict, name: str, width: int, embed_dim: int) -> np.ndarray:
    if name in params:
        return params[name]["kernel"].T  # [in, out] -> torch [out, in]
    return np.eye(embed_dim, width, dtype=np.float32)  # no head: width == embed_dim


def clip_state_dict(params: dict, model: Any) -> dict[str, np.ndarray]:
    """Our nested params -> CLIPModel's state dict (numpy, float32)."""
    img, txt = params["img"], params["txt"]
    isize = resolve_size(model.image, tower="image", with_patch=True)
    tsize = resolve_size(model.text, tower="text", with_patch=False)
    kernel, cls, pos = class_token_embeddings(img, model)
    sd = {
        "vision_model.embeddings.patch_embedding.weight": kernel,
        "vision_model.embeddings.class_embedding": cls,
        "vision_model.embeddings.position_embedding.weight": pos,
    }
    sd |= prefixed("vision_model.pre_layrnorm", norm(img["pre_norm"]))
    sd |= encoder("vision_model.encoder", img["encoder"])
    sd |= prefixed("vision_model.post_layernorm", norm(img["encoder"]["encoder_norm"]))
    sd["text_model.embeddings.token_embedding.weight"] = txt["embedding"]["embedding"]
    sd["text_model.embeddings.position_embedding.weight"] = txt["pos_embedding"][0]
    sd |= encoder("text_model.encoder", txt["encoder"])
    sd |= prefixed("text_model.final_layer_norm", norm(txt["encoder"]["encoder_norm"]))
    sd["visual_projection.weight"] = _projection(params, "img_head", isize["width"],
                                                 model.embed_dim)
    sd["text_projection.weight"] = _projection(params, "txt_head", tsize["width"],
                                               model.embed_dim)
    sd["logit_scale"] = np.reshape(params["t_log"], ())
    return {k: np.array(v, dtype=np.float32, order="C") for k, v in sd.items()}


def clip_config(model: Any):
    """transformers.CLIPConfig for a complete model config."""
    from transformers import CLIPConfig

    text, vision = hf_towers(model, projection_dim=model.embed_dim)
    return CLIPConfig(text_config=text, vision_config=vision, projection_dim=model.embed_dim)
