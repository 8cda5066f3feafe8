"""CLIP ViT-B/32 at 224 px (Radford et al. 2021): B/32 image tower, 512-wide 12-layer text
tower (size M), embed_dim 512.

    contrastive-jax bench recipes                      # params and GFLOPs vs published
    contrastive-jax bench step --config configs/recipes/clip_b32.py:batch=256

Published: 151.28 M params, 14.78 GFLOPs per example (8.82 image + 5.96 text), from
open_clip's docs/model_profile.csv (mlfoundations/open_clip at 89fb801), counted with
torch's FlopCounterMode (2 FLOPs per multiply-add).
"""

import ml_collections

from contrastive_jax.config.recipes import clip, published


def get_config(batch: int = 32768, steps: int = 100_000) -> ml_collections.ConfigDict:
    return clip(image="B/32", text="M", embed_dim=512,
                published=published(151.28e6, 14.78, 8.82, 5.96), batch=batch, steps=steps)
