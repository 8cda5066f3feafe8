"""LiT B16B (Zhai et al. 2022): a locked B/16 class-token image tower and a BERT-Base-sized
text tower over 16 tokens, both projected to 768 (the released LiT-B16B_2); start it from
a pretrained image tower with --config.train.init_from.path=...

    contrastive-jax bench recipes                      # params and GFLOPs vs published
    contrastive-jax bench step --config configs/recipes/lit_b16b.py:batch=256

Published: 196 M weights, from the LiT model card (google-research/vision_transformer,
model_cards/lit.md at 1cec86b); no GFLOPs are published per tower ("approx. 10" per example).
"""

import ml_collections

from contrastive_jax.config.recipes import lit, published


def get_config(batch: int = 32768, steps: int = 100_000) -> ml_collections.ConfigDict:
    return lit(image="B/16", text="B", embed_dim=768,
                published=published(196e6), batch=batch, steps=steps)
