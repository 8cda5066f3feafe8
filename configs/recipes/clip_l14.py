"""CLIP ViT-L/14 at 224 px (Radford et al. 2021): L/14 image tower, 768-wide 12-layer text
tower (size B), embed_dim 768.

    contrastive-jax bench recipes                      # params and GFLOPs vs published
    contrastive-jax bench step --config configs/recipes/clip_l14.py:batch=256

Published: 427.62 M params, 175.33 GFLOPs per example (162.03 image + 13.30 text), from
open_clip's docs/model_profile.csv (mlfoundations/open_clip at 89fb801), counted with
torch's FlopCounterMode (2 FLOPs per multiply-add).

Trained on: 256 V100 GPUs for 12 days at batch 32,768 (Radford et al. 2021, sections 2.5 and
the appendix's hyperparameter table). Its default `plan` topology is a TPU slice of as many
chips, v4-512 (256 chips, 128 examples each); `--topology v100-256` plans the paper's GPUs
through jax's CUDA plugin (docs/plan.md; with `model.remat=full` it fits, docs/benchmarks.md).
"""

import ml_collections

from contrastive_jax.config.recipes import clip, published


def get_config(batch: int = 32768, steps: int = 100_000) -> ml_collections.ConfigDict:
    return clip(image="L/14", text="B", embed_dim=768,
                published=published(427.62e6, 175.33, 162.03, 13.30,
                                  hardware="256 V100 GPUs", topology="v4-512", batch=32_768),
                batch=batch, steps=steps)
