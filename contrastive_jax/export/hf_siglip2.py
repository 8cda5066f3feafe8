"""transformers' Siglip2Model (NaFlex) for our `model.image.naflex` towers: its config, its
image processor and the patch-embedding layout, both ways.

Siglip2Model is SiglipModel with a NaFlex vision embedding: a Linear patch embedding over
[p*p*C] patches in (row, column, channel) order, the learned g x g position table resized
per image (exactly as models/naflex.py), and the padding masked in attention and in the MAP
head. Everything else (blocks, heads, text tower, logits) is SiglipModel's, so export/hf.py
writes the state dict and the checks; this module holds what differs.

Two transformers rules for a `siglip2` directory shape how it is used:
- `AutoTokenizer` (and so `AutoProcessor`'s text side) always builds `Siglip2Tokenizer`,
  Gemma's lowercasing BPE with left padding and no EOS, from whatever tokenizer the directory
  holds: our sentencepiece (unigram) models cannot be expressed in it. The export saves our
  tokenizer as a T5Tokenizer, as the SigLIP export does; read text with
  `T5Tokenizer.from_pretrained(DIR)(texts, padding="max_length")`. Images go through
  `AutoProcessor.from_pretrained(DIR).image_processor` (or `AutoImageProcessor`).
- `Siglip2Processor` passes its own defaults (patch_size=16, max_num_patches=256) to the
  image processor on every call: with a patch other than 16, pass `patch_size=`.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from contrastive_jax.errors import DataError
from contrastive_jax.export.hf_layers import hf_towers
from contrastive_jax.models.sizes import resolve_size


def is_naflex(model: Any) -> bool:
    """Whether a complete model config has a NaFlex image tower."""
    return bool(model.image.get("naflex", False))


def patch_size(model: Any) -> int:
    """A complete model config's image patch size (given, or its variant's: "B/16")."""
    return int(resolve_size(model.image, tower="image", with_patch=True)["patch_size"])


def posemb_grid(model: Any) -> int:
    """The side g of a NaFlex model's g x g position table."""
    size = model.image.image_size
    return (size if isinstance(size, int) else int(size[0])) // patch_size(model)


def naflex_patch_weight(kernel: np.ndarray, channels: int) -> np.ndarray:
    """Our patch Linear kernel [p*p*C, width] -> Siglip2's `patch_embedding.weight`
    [width, p*p*3]. A grey (C=1) kernel is split evenly across RGB, exact for a grey image
    replicated to RGB (the exported processor converts every image to RGB)."""
    if channels == 1:
        kernel = np.repeat(kernel / 3.0, 3, axis=0)  # each pixel's weight to its R, G, B
    return kernel.T


def siglip2_config(model: Any):
    """transformers.Siglip2Config for a complete NaFlex model config."""
    from transformers import Siglip2Config

    text, vision = hf_towers(model)
    vision.pop("image_size")  # Siglip2 knows the table only by its number of positions
    vision["num_patches"] = posemb_grid(model) ** 2
    return Siglip2Config(text_config=dict(text, projection_size=model.embed_dim),
                         vision_config=dict(vision, vision_use_head=True))


def siglip2_image_processor(card: dict, patch: int, max_num_patches: int):
    """Siglip2's image processor (its Pillow backend, named, as export/hf.py names
    SigLIP's) for our value range: x/255 then (x - mean) / std is lo + x/255 * (hi - lo).
    data/naflex.py's `naflex_patches` computes exactly its output."""
    from transformers import Siglip2ImageProcessorPil
    from transformers.image_utils import PILImageResampling

    lo, hi = card["image"]["value_range"]
    return Siglip2ImageProcessorPil(
        image_mean=[-lo / (hi - lo)] * 3, image_std=[1.0 / (hi - lo)] * 3,
        do_convert_rgb=True, patch_size=patch, max_num_patches=max_num_patches,
        resample=PILImageResampling.BILINEAR)


def save_siglip2_processor(out: str, card: dict, tokenizer: Any, model: Any) -> None:
    """Siglip2Processor (image processor + our T5 tokenizer) into `out`; the default budget
    is the position table's own number of patches. See the module docstring for reading
    text back."""
    from transformers import Siglip2Processor

    image = siglip2_image_processor(card, patch_size(model), posemb_grid(model) ** 2)
    Siglip2Processor(image_processor=image, tokenizer=tokenizer).save_pretrained(out)
    # The processor records its tokenizer as Siglip2Tokenizer; ours is a T5Tokenizer.
    tokenizer.save_pretrained(out)


def naflex_image_config(vis: dict, where: str) -> dict:
    """Our `model.image` keys from a Siglip2 vision_config: a NaFlex tower whose g x g
    table is `image_size / patch_size` on a side."""
    grid = math.isqrt(int(vis.get("num_patches", 256)))
    if grid * grid != int(vis.get("num_patches", 256)):
        raise DataError(f"{where}: vision_config.num_patches={vis['num_patches']} is not a "
                        "square number (Siglip2 reshapes its position table to a square)")
    patch = vis.get("patch_size", 16)
    if not isinstance(patch, int):
        if len(set(patch)) != 1:
            raise DataError(f"{where}: vision_config.patch_size={patch}; NaFlex patches are "
                            "square")
        patch = int(patch[0])
    return dict(naflex=True, patch_size=patch, image_size=grid * patch)

