"""CLIP ViT-B/16 at 224 px (Radford et al. 2021): B/16 image tower, 512-wide 12-layer text
tower (size M), embed_dim 512.

    contrastive-jax bench recipes                      # params and GFLOPs vs published
    contrastive-jax bench step --config configs/recipes/clip_b16.py:batch=256

Published: 149.62 M params, 41.09 GFLOPs per example (35.13 image + 5.96 text), from
open_clip's docs/model_profile.csv (mlfoundations/open_clip at 89fb801), counted with
torch's FlopCounterMode (2 FLOPs per multiply-add).

Trained on: 176 A100 (40 GB) GPUs, 192 examples each, global batch 33,792 (open_clip's
docs/PRETRAINED.md at 05e7db4, "LAION-400M, ViT-B/16 224x224"). Radford et al. 2021 train
B/16 at 32,768 but name no hardware for it, so the recipe takes the published reproduction's
GPUs and batch together: 32,768 does not split over 176 GPUs. `plan` compiles for them with
jax's CUDA plugin (docs/plan.md); OpenAI's batch on the 128 GPUs of open_clip's B/32 run is
`--topology a100-40gb-128 --batch 32768`.

    contrastive-jax plan --config configs/recipes/clip_b16.py        # a100-40gb-176
"""

import ml_collections

from contrastive_jax.config.recipes import clip, published


def get_config(batch: int = 33_792, steps: int = 100_000) -> ml_collections.ConfigDict:
    return clip(image="B/16", text="M", embed_dim=512,
                published=published(149.62e6, 41.09, 35.13, 5.96,
                                    hardware="176 A100 40 GB GPUs (open_clip, LAION-400M)",
                                    topology="a100-40gb-176", batch=33_792),
                batch=batch, steps=steps)
