"""CLIP ViT-B/32 at 224 px (Radford et al. 2021): B/32 image tower, 512-wide 12-layer text
tower (size M), embed_dim 512.

    contrastive-jax bench recipes                      # params and GFLOPs vs published
    contrastive-jax bench step --config configs/recipes/clip_b32.py:batch=256

Published: 151.28 M params, 14.78 GFLOPs per example (8.82 image + 5.96 text), from
open_clip's docs/model_profile.csv (mlfoundations/open_clip at 89fb801), counted with
torch's FlopCounterMode (2 FLOPs per multiply-add).

Trained on: 128 A100 (40 GB) GPUs, 256 examples each, global batch 32,768 (open_clip's
docs/PRETRAINED.md at 05e7db4, "LAION-400M, ViT-B/32 224x224": its replication of OpenAI's
B/32). The recipe is OpenAI's B/32 (Radford et al. 2021: the same batch, 32,768), whose paper
gives GPU counts only for its largest models (RN50x64; L/14, see clip_l14.py), so the hardware
is that of the published reproduction. `plan` compiles for it with jax's CUDA plugin
(docs/plan.md); the TPU slice with as many chips is v4-256:

    contrastive-jax plan --config configs/recipes/clip_b32.py        # a100-40gb-128
    contrastive-jax plan --config configs/recipes/clip_b32.py --topology v4-256
"""

import ml_collections

from contrastive_jax.config.recipes import clip, published


def get_config(batch: int = 32768, steps: int = 100_000) -> ml_collections.ConfigDict:
    return clip(image="B/32", text="M", embed_dim=512,
                published=published(151.28e6, 14.78, 8.82, 5.96,
                                    hardware="128 A100 40 GB GPUs (open_clip, LAION-400M)",
                                    topology="a100-40gb-128", batch=32_768),
                batch=batch, steps=steps)
