"""CatLIP (Mehta et al. 2024, "CLIP-level Visual Recognition Accuracy with 2.7x Faster
Pre-training on Web-scale Image-Text Data"): the image tower alone, trained to say which
WordNet synsets an image's caption names (data/synsets.py), by multi-label binary
cross-entropy. No text tower and no pairwise similarities: the loss is per example, so it
shards with the batch like any classifier.

Zero-shot classification reads the head's rows of each class name's synsets (their mean
logit); the few-shot probe reads `encode_image`, the tower's pooled features.

Config schema: two_tower's `image` and compute keys, plus `head.num_synsets` (the synset
vocabulary's size; the run checks it against the vocabulary).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from contrastive_jax.errors import ConfigError
from contrastive_jax.losses.synset_bce import multi_hot, synset_bce
from contrastive_jax.models import two_tower
from contrastive_jax.models.sizes import resolve_size
from contrastive_jax.models.two_tower import image_tower, l2_normalize


def default_config() -> ml_collections.ConfigDict:
    """Image tower and compute keys of two_tower, a `head` group instead of `text`."""
    base = two_tower.default_config()
    return ml_collections.ConfigDict(
        dict(name="catlip", dtype=base.dtype, param_dtype=base.param_dtype, remat=base.remat,
             scan_layers=base.scan_layers, image=dict(base.image.to_dict(), pool="gap"),
             head=dict(num_synsets=0)), type_safe=False)


class CatLIP(nnx.Module):
    """ViT + a linear head with one logit per synset."""

    def __init__(self, config: Mapping[str, Any], *, rngs: nnx.Rngs):
        n = config["head"]["num_synsets"]
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise ConfigError("config key 'model.head.num_synsets' must be the synset "
                              f"vocabulary's size (a positive integer), got {n!r}")
        self.num_synsets = n
        isize = resolve_size(config["image"], tower="image", with_patch=True)
        self.img = image_tower(config, isize, rngs)
        # corenet's linear init: truncated normal, std 0.02; zero bias.
        self.head = nnx.Linear(isize["width"], n, param_dtype=config["param_dtype"],
                               kernel_init=nnx.initializers.truncated_normal(0.02), rngs=rngs)

    def encode_image(self, images: jax.Array, mask_noise: jax.Array | None = None) -> jax.Array:
        """The tower's pooled features, unit-norm float32 [B, width] (the few-shot probe's)."""
        return l2_normalize(self.img(images, mask_noise=mask_noise))

    def synset_logits(self, images: jax.Array, mask_noise: jax.Array | None = None) -> jax.Array:
        """float32 [B, num_synsets]."""
        return self.head(self.img(images, mask_noise=mask_noise)).astype(jnp.float32)

    def classification_loss(self, images: jax.Array, labels: jax.Array,
                            mask_noise: jax.Array | None = None) -> tuple[jax.Array, dict]:
        """`labels` [B, L]: 1-based synset ids, 0-padded (the labeller's "text")."""
        return synset_bce(self.synset_logits(images, mask_noise),
                          multi_hot(labels, self.num_synsets))

    def class_scores(self, images: jax.Array, rows: jax.Array) -> jax.Array:
        """[B, C]: each class's mean synset logit (`rows` [C, num_synsets], each row its
        synsets' equal weights); a class with no synset in the vocabulary scores -inf."""
        scores = self.synset_logits(images) @ rows.T
        return jnp.where(rows.sum(axis=-1) > 0, scores, -jnp.inf)
