"""LiT B16B (Zhai et al. 2022): a locked B/16 class-token image tower and a BERT-Base-sized
text tower over 16 tokens, both projected to 768 (the released LiT-B16B_2); start it from
a pretrained image tower with --config.train.init_from.path=...

    contrastive-jax bench recipes                      # params and GFLOPs vs published
    contrastive-jax bench step --config configs/recipes/lit_b16b.py:batch=256

Published: 196 M weights, from the LiT model card (google-research/vision_transformer,
model_cards/lit.md at 1cec86b); no GFLOPs are published per tower ("approx. 10" per example).

Trained on: 64 TPU v4 chips (the same model card: "128 TPUv4 cores", "Number of Chips: 64"
for B16B), the slice v4-128. The card gives no batch, nor does big_vision's lit_coco.py (4,096,
a COCO sanity check); the LiT paper's text (arXiv:2111.07991) was not in the sources read, so
32,768 is this recipe's batch, not a published figure: 512 examples a chip.

    contrastive-jax plan --config configs/recipes/lit_b16b.py        # v4-128
"""

import ml_collections

from contrastive_jax.config.recipes import lit, published


def get_config(batch: int = 32768, steps: int = 100_000) -> ml_collections.ConfigDict:
    return lit(image="B/16", text="B", embed_dim=768,
                published=published(196e6, hardware="64 TPU v4 chips (model card)",
                                    topology="v4-128", batch=32_768),
                batch=batch, steps=steps)
