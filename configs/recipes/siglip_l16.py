"""SigLIP L/16 at 256 px (Zhai et al. 2023): MAP-pooled L/16 image tower, L text tower over
64 tokens, embed_dim 1024 (open_clip's ViT-L-16-SigLIP-256, big_vision's SigLIP L/16).

    contrastive-jax bench recipes                      # params and GFLOPs vs published
    contrastive-jax bench step --config configs/recipes/siglip_l16.py:batch=256

Published: 652.15 M params, 201.62 GFLOPs per example (162.56 image + 39.06 text), from
open_clip's docs/model_profile.csv (mlfoundations/open_clip at 89fb801), counted with
torch's FlopCounterMode (2 FLOPs per multiply-add).
"""

import ml_collections

from contrastive_jax.config.recipes import published, siglip


def get_config(batch: int = 32768, steps: int = 100_000) -> ml_collections.ConfigDict:
    return siglip(image="L/16", text="L", embed_dim=1024, image_size=256,
                published=published(652.15e6, 201.62, 162.56, 39.06), batch=batch, steps=steps)
