"""SigLIP L/16 at 256 px (Zhai et al. 2023): MAP-pooled L/16 image tower, L text tower over
64 tokens, embed_dim 1024 (open_clip's ViT-L-16-SigLIP-256, big_vision's SigLIP L/16).

    contrastive-jax bench recipes                      # params and GFLOPs vs published
    contrastive-jax bench step --config configs/recipes/siglip_l16.py:batch=256

Published: 652.15 M params, 201.62 GFLOPs per example (162.56 image + 39.06 text), from
open_clip's docs/model_profile.csv (mlfoundations/open_clip at 89fb801), counted with
torch's FlopCounterMode (2 FLOPs per multiply-add).

Trained on: "16 TPU-v4 chips for three days", the model card of google/siglip-large-patch16-256
(read in a stored copy of the card, gr.tbb.rip/models/google/siglip-large-patch16-256; the
same sentence as the B/16 and So400m cards), at the SigLIP paper's batch of 32,768
(arXiv:2303.15343). 16 v4 chips are the slice v4-32, 2,048 examples each:

    contrastive-jax plan --config configs/recipes/siglip_l16.py        # v4-32

`plan` shows what that slice can hold (docs/benchmarks.md, libtpu 0.0.42.1): without remat
the step needs 466 GiB per chip; remat alone, remat with FSDP and remat with 2 micro-batches
do not fit either; remat=full with 2 GradCache micro-batches and FSDP (params and AdamW's
moments over all 16 chips) needs 30.05 of the 30.75 GiB libtpu lets one program use. Those
are the defaults below.
"""

import ml_collections

from contrastive_jax.config.recipes import published, siglip


def get_config(batch: int = 32768, steps: int = 100_000) -> ml_collections.ConfigDict:
    c = siglip(image="L/16", text="L", embed_dim=1024, image_size=256,
               published=published(652.15e6, 201.62, 162.56, 39.06,
                                   hardware="16 TPU v4 chips (model card)", topology="v4-32",
                                   batch=32_768),
               batch=batch, steps=steps)
    # What lets the card's 16 v4 chips hold 32k (`contrastive-jax plan`, docs/benchmarks.md).
    c.model.remat = "full"
    c.train.microbatches = 2
    c.mesh = ml_collections.ConfigDict({"data": 1, "fsdp": -1})
    return c
