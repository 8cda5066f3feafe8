"""SigLIP So400m/14 at 224 px (Alabdulmohsin et al. 2023, shape-optimised ViT): So400m/14
image and So400m text towers, 16 text tokens, embed_dim 1152 (open_clip's
ViT-SO400M-14-SigLIP).

    contrastive-jax bench recipes                      # params and GFLOPs vs published
    contrastive-jax bench step --config configs/recipes/siglip_so400m14.py:batch=256

Published: 877.36 M params, 233.54 GFLOPs per example (220.35 image + 13.19 text), from
open_clip's docs/model_profile.csv (mlfoundations/open_clip at 89fb801), counted with
torch's FlopCounterMode (2 FLOPs per multiply-add).

Trained on: "16 TPU-v4 chips for three days" at batch 32,768 says the model card of
google/siglip-so400m-patch14-384, in the same words as the B/16 and L/16 cards; 32k is the
batch the SigLIP paper (arXiv:2303.15343) settles on. `plan` shows what that slice can hold
(docs/benchmarks.md): at 2,048 examples per chip the rematerialised blocks' f32 inputs alone
are 27 x 2.25 GiB, so it needs GradCache micro-batches as well as remat. The defaults below
are the setting compiled to fit there: remat=full with 8 micro-batches, 27.44 GiB per chip
(4 micro-batches: 32.12 GiB; with FSDP, `--config.mesh.data=1 --config.mesh.fsdp=-1`,
4 micro-batches need 18.36 GiB, docs/benchmarks.md).
"""

import ml_collections

from contrastive_jax.config.recipes import published, siglip


def get_config(batch: int = 32768, steps: int = 100_000) -> ml_collections.ConfigDict:
    c = siglip(image="So400m/14", text="So400m", embed_dim=1152, image_size=224,
                  max_len=16,
                published=published(877.36e6, 233.54, 220.35, 13.19,
                                  hardware="16 TPU v4 chips (model card)", topology="v4-32",
                                  batch=32_768), batch=batch, steps=steps)
    # What lets the paper's 16 v4 chips hold 32k (`contrastive-jax plan`, docs/benchmarks.md).
    c.model.remat = "full"
    c.train.microbatches = 8
    return c
