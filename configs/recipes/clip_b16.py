"""CLIP ViT-B/16 at 224 px (Radford et al. 2021): B/16 image tower, 512-wide 12-layer text
tower (size M), embed_dim 512.

    contrastive-jax bench recipes                      # params and GFLOPs vs published
    contrastive-jax bench step --config configs/recipes/clip_b16.py:batch=256

Published: 149.62 M params, 41.09 GFLOPs per example (35.13 image + 5.96 text), from
open_clip's docs/model_profile.csv (mlfoundations/open_clip at 89fb801), counted with
torch's FlopCounterMode (2 FLOPs per multiply-add).
"""

import ml_collections

from contrastive_jax.config.recipes import clip, published


def get_config(batch: int = 32768, steps: int = 100_000) -> ml_collections.ConfigDict:
    return clip(image="B/16", text="M", embed_dim=512,
                published=published(149.62e6, 41.09, 35.13, 5.96), batch=batch, steps=steps)
