"""CLIPPO B/16 (Tschannen et al. 2023): one MAP-pooled B/16 ViT with a 768-d head reads
224 px images and captions rendered at 224 px (big_vision's train_clippo.py).

    contrastive-jax bench recipes                      # params and GFLOPs vs published
    contrastive-jax bench step --config configs/recipes/clippo_b16.py:batch=256

Published: 93 M params, from big_vision's configs/proj/clippo/README.md (google-research/big_vision
at 0127fb6); no GFLOPs are published.
"""

import ml_collections

from contrastive_jax.config.recipes import clippo, published


def get_config(batch: int = 10240, steps: int = 250_000) -> ml_collections.ConfigDict:
    return clippo(image="B/16", embed_dim=768,
                published=published(93e6), batch=batch, steps=steps)
