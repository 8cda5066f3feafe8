"""CLIPPO B/16 (Tschannen et al. 2023): one MAP-pooled B/16 ViT with a 768-d head reads
224 px images and captions rendered at 224 px (big_vision's train_clippo.py).

    contrastive-jax bench recipes                      # params and GFLOPs vs published
    contrastive-jax bench step --config configs/recipes/clippo_b16.py:batch=256

Published: 93 M params, from big_vision's configs/proj/clippo/README.md (google-research/big_vision
at 0127fb6); no GFLOPs are published.

Trained on: 128 TPU v3 chips at the paper's batch of 10,240 (the same README at 3b36bb7: its
table's LAION-400M row, "10240 | 100k | 128 v3" under "TPU chips", and its footnote; the
comment in train_clippo.py at fd2d3bd says "128 TPUv3 cores" instead). `plan` has no v3
target, so its default is the v4 slice with the same chip count, v4-256 (80 examples a chip):

    contrastive-jax plan --config configs/recipes/clippo_b16.py        # v4-256
"""

import ml_collections

from contrastive_jax.config.recipes import clippo, published


def get_config(batch: int = 10240, steps: int = 250_000) -> ml_collections.ConfigDict:
    return clippo(image="B/16", embed_dim=768,
                published=published(93e6, hardware="128 TPU v3 chips (big_vision README)",
                                    topology="v4-256", batch=10_240),
                batch=batch, steps=steps)
