"""Hugging Face `transformers` export: a SigLIP-architecture model as `SiglipModel` (with a
NaFlex image tower as `Siglip2Model`, see export/hf_siglip2.py), a CLIP-architecture one as
`CLIPModel` (see export/hf_clip.py).

Only models that transformers computes exactly are exported; anything else is refused with a
one-line error naming the features, never silently approximated. `SiglipModel` fixes:
  image: MAP-head pooling (`vision_model.head`), learned position embeddings, no projection
         after the pool (so image width == embed_dim and `image.head=False`), no pre-norm;
  text:  no pad masking and the output at the final position (`text.pool="final"`, as
         big_vision's SigLIP), bidirectional, followed by a Linear head (`text_model.head`);
  both:  pre-LN blocks, LayerNorm eps 1e-6, tanh-approximate GELU ("gelu_pytorch_tanh").
The tokenizer is saved as a T5Tokenizer (see `_save_processors`); pad text to max_len.
"""

from __future__ import annotations

import json
import os
import shutil
from typing import Any

import numpy as np

from contrastive_jax import paths
from contrastive_jax.errors import ConfigError, UserError
from contrastive_jax.export.hf_clip import clip_config, clip_state_dict, clip_unsupported
from contrastive_jax.export.hf_layers import (
    encoder,
    hf_towers,
    linear,
    mlp,
    norm,
    packed_attention,
    prefixed,
    rgb_patch_kernel,
    shared_unsupported,
)
from contrastive_jax.export.hf_siglip2 import (
    is_naflex,
    naflex_patch_weight,
    save_siglip2_processor,
    siglip2_config,
)
from contrastive_jax.export.native import TOKENIZER_FILE, export_config, write_atomically
from contrastive_jax.models import complete_config
from contrastive_jax.models.sizes import resolve_size


def unsupported_features(model: Any) -> list[str]:
    """Why `model` (a complete model config) cannot be an exact SiglipModel; [] if it can."""
    img, txt = model.image, model.text
    isize = resolve_size(img, tower="image", with_patch=True)
    reasons = shared_unsupported(model)
    if img.pool != "map":
        reasons.append(f"image.pool={img.pool!r} (SiglipModel pools with its MAP head)")
    if img.posemb != "learn":
        reasons.append(f"image.posemb={img.posemb!r} (SiglipModel learns position embeddings)")
    if img.head or isize["width"] != model.embed_dim:
        reasons.append("an image projection head (SiglipModel has none: need image.head=False "
                       "and image width == embed_dim)")
    if txt.pool != "final":
        reasons.append(f"text.pool={txt.pool!r} (SiglipModel pools the final position without "
                       "pad masking: text.pool='final')")
    if img.pre_norm:
        reasons.append("image.pre_norm=True (SiglipModel has no pre-encoder LayerNorm)")
    if txt.causal:
        reasons.append("text.causal=True (SiglipModel's text attention is bidirectional)")
    return reasons


def tokenizer_unsupported(config: Any, tokenizer_file: str) -> list[str]:
    """Why the exported T5Tokenizer would not tokenise as the model was trained (its
    recorded text conventions); [] if it does. T5Tokenizer pads with id 0 and keeps the
    EOS last when it truncates (our "sticky"), and lowercases only if the sentencepiece
    model itself folds case."""
    from contrastive_jax.data.text_conventions import for_model

    conventions = for_model(config)
    reasons = []
    if conventions.pad_id != 0:
        reasons.append(f"data.pad_id={conventions.pad_id} (T5Tokenizer pads with 0)")
    if conventions.eos != "sticky":
        reasons.append(f"data.eos={conventions.eos!r} (T5Tokenizer keeps the EOS: 'sticky')")
    if conventions.lowercase == "ascii" or conventions.lowercase == "unicode" and not (
            _folds_case(tokenizer_file)):
        reasons.append(f"data.lowercase={conventions.lowercase!r} (T5Tokenizer lowercases "
                       "only as the sentencepiece model's own normaliser does)")
    return reasons


def _folds_case(tokenizer_file: str) -> bool:
    """Whether the sentencepiece model's own normaliser lowercases (ASCII and beyond)."""
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_proto=paths.read_bytes(tokenizer_file))
    probe = "Ab Zy \u00c4\u00d6"  # ASCII and non-ASCII capitals
    return sp.encode(probe) == sp.encode(probe.lower())


def siglip_state_dict(params: dict, embed_dim: int, channels: int | None = None
                      ) -> dict[str, np.ndarray]:
    """Our nested params -> SiglipModel's state dict (numpy, float32); with `channels` (the
    image channels of a NaFlex model), Siglip2Model's: a Linear patch embedding."""
    img, txt = params["img"], params["txt"]
    kernel = img["embedding"]["kernel"]
    sd = {
        "vision_model.embeddings.patch_embedding.weight":
            rgb_patch_kernel(kernel) if channels is None
            else naflex_patch_weight(kernel, channels),
        "vision_model.embeddings.patch_embedding.bias": img["embedding"]["bias"],
        "vision_model.embeddings.position_embedding.weight": img["pos_embedding"][0],
    }
    sd |= encoder("vision_model.encoder", img["encoder"])
    sd |= prefixed("vision_model.post_layernorm", norm(img["encoder"]["encoder_norm"]))
    head = img["map_head"]
    sd["vision_model.head.probe"] = head["probe"]
    sd |= prefixed("vision_model.head.attention", packed_attention(head["attn"]))
    sd |= prefixed("vision_model.head.layernorm", norm(head["ln"]))
    sd |= prefixed("vision_model.head.mlp", mlp(head["mlp"]))

    sd["text_model.embeddings.token_embedding.weight"] = txt["embedding"]["embedding"]
    sd["text_model.embeddings.position_embedding.weight"] = txt["pos_embedding"][0]
    sd |= encoder("text_model.encoder", txt["encoder"])
    sd |= prefixed("text_model.final_layer_norm", norm(txt["encoder"]["encoder_norm"]))
    if "txt_head" in params:
        head = params["txt_head"]
        bias = head.get("bias", np.zeros(head["kernel"].shape[-1], np.float32))  # proj_bias
        sd |= prefixed("text_model.head", linear(head["kernel"], bias))
    else:  # no text projection in our model: an exact identity in SiglipModel's head
        sd["text_model.head.weight"] = np.eye(embed_dim, dtype=np.float32)
        sd["text_model.head.bias"] = np.zeros(embed_dim, np.float32)
    sd["logit_scale"] = np.reshape(params["t_log"], (1,))
    sd["logit_bias"] = np.reshape(params.get("b", np.zeros(())), (1,))
    # Copies: writable, contiguous arrays, as torch.from_numpy wants.
    return {k: np.array(v, dtype=np.float32, order="C") for k, v in sd.items()}


def siglip_config(model: Any):
    """transformers.SiglipConfig for a complete model config."""
    from transformers import SiglipConfig

    text, vision = hf_towers(model)
    return SiglipConfig(text_config=dict(text, projection_size=model.embed_dim),
                        vision_config=dict(vision, vision_use_head=True))


def image_processor(card: dict, clip: bool):
    """The image processor that feeds the exported model as our eval pipeline does."""
    from transformers import CLIPImageProcessorPil, SiglipImageProcessorPil
    from transformers.image_utils import PILImageResampling

    lo, hi = card["image"]["value_range"]
    size = card["image"]["size"]
    # x/255 then (x - mean) / std is our lo + x/255 * (hi - lo). Three channels: the model
    # is exported as RGB (see hf_layers.rgb_patch_kernel), and the processor converts
    # grey images to RGB. Our eval squashes an image to the model's square size with a
    # bilinear (antialiased) resize, without cropping: so does this processor, CLIP's too.
    # The PIL backends, named: the same resize (PIL's, as open_clip's) with or without
    # torchvision installed, and no warning about a missing torchvision on load.
    kwargs = dict(image_mean=[-lo / (hi - lo)] * 3, image_std=[1.0 / (hi - lo)] * 3,
                  do_convert_rgb=True, size={"height": size, "width": size},
                  resample=PILImageResampling.BILINEAR)
    if clip:
        return CLIPImageProcessorPil(do_center_crop=False, **kwargs)
    return SiglipImageProcessorPil(**kwargs)


def save_tokenizer(out: str, card: dict, *, masked: bool):
    """Saves our sentencepiece model in `out` as a transformers T5Tokenizer; returns it.

    Not CLIPTokenizer: a byte-level BPE cannot hold a sentencepiece model. Not
    SiglipTokenizer: it strips punctuation before encoding (big_vision's canonicalisation),
    ours does not. T5's conventions are exactly ours: sentencepiece ids, pad 0, eos 1
    appended, unk 2, no bos. `masked=False` (a model trained without a pad mask): no
    attention_mask, so `model(**tokenizer(...))`, or a processor's output passed whole, runs
    the model unmasked, as training did."""
    from transformers import T5Tokenizer

    shutil.copyfile(os.path.join(out, TOKENIZER_FILE), os.path.join(out, "spiece.model"))
    settings = {"tokenizer_class": "T5Tokenizer", "extra_ids": 0, "eos_token": "</s>",
                "pad_token": "<pad>", "unk_token": "<unk>",
                "model_max_length": card["text"]["max_len"]}
    if not masked:
        settings["model_input_names"] = ["input_ids"]
    with open(os.path.join(out, "tokenizer_config.json"), "w", encoding="utf-8") as f:
        json.dump(settings, f)
    # T5Tokenizer by name: AutoTokenizer would build Siglip2Tokenizer in a siglip2 directory.
    tokenizer = T5Tokenizer.from_pretrained(out)
    tokenizer.save_pretrained(out)
    return tokenizer


def _save_processors(out: str, card: dict, clip: bool, model: Any) -> None:
    from transformers import CLIPProcessor, SiglipProcessor

    # CLIP keeps the attention mask: its causal EOS pooling never sees the pads either way.
    tokenizer = save_tokenizer(out, card, masked=clip)
    if is_naflex(model):
        save_siglip2_processor(out, card, tokenizer, model)
        return
    processor_class = CLIPProcessor if clip else SiglipProcessor
    processor_class(image_processor=image_processor(card, clip),
                    tokenizer=tokenizer).save_pretrained(out)


def export_hf(config: Any, params: dict, step: int, tokenizer_file: str, out: str, *,
              overwrite: bool = False) -> str:
    """Writes restored weights (`params` at `step` of a run with `config`, whose tokenizer is
    `tokenizer_file`) as a transformers SiglipModel or CLIPModel directory, whichever
    computes the model exactly."""
    model = complete_config(config.model.to_dict())
    siglip_reasons, clip_reasons = unsupported_features(model), clip_unsupported(model)
    clip = bool(siglip_reasons) and not clip_reasons
    if is_naflex(model) and siglip_reasons:
        raise UserError("cannot export exactly as transformers Siglip2Model: "
                        + "; ".join(siglip_reasons))
    if siglip_reasons and clip_reasons:
        raise UserError("cannot export exactly as transformers SiglipModel: "
                        + "; ".join(siglip_reasons) + "; nor as CLIPModel: "
                        + "; ".join(clip_reasons))
    text_reasons = tokenizer_unsupported(config, tokenizer_file)
    if text_reasons:
        raise UserError("cannot export a tokenizer that tokenises as this model was trained: "
                        + "; ".join(text_reasons))
    if not clip and config.data.max_len != model.text.max_len:
        raise ConfigError(f"config key 'data.max_len' ({config.data.max_len}) != "
                          f"'model.text.max_len' ({model.text.max_len}): SiglipModel pools "
                          "position -1 of the padded sequence, so both must agree")
    import torch
    from transformers import CLIPModel, Siglip2Model, SiglipModel

    if clip:
        hf_model, tensors = CLIPModel(clip_config(model)), clip_state_dict(params, model)
    elif is_naflex(model):
        hf_model = Siglip2Model(siglip2_config(model))
        tensors = siglip_state_dict(params, model.embed_dim, model.image.channels)
    else:
        hf_model = SiglipModel(siglip_config(model))
        tensors = siglip_state_dict(params, model.embed_dim)
    hf_model.load_state_dict({k: torch.from_numpy(v) for k, v in tensors.items()}, strict=True)
    card = export_config(config, params, step)

    def fill(tmp: str) -> None:
        hf_model.save_pretrained(tmp)
        paths.copy(tokenizer_file, os.path.join(tmp, TOKENIZER_FILE))
        _save_processors(tmp, card, clip, model)
        with open(os.path.join(tmp, "contrastive_jax_export.json"), "w",
                  encoding="utf-8") as f:
            json.dump(card, f, indent=2, sort_keys=True)

    return write_atomically(out, overwrite, fill)
