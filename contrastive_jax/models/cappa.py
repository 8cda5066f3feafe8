"""CapPa (Tschannen et al. 2023, "Image Captioners Are Scalable Vision Learners Too"): a ViT
encoder and a transformer decoder trained only to caption, with parallel prediction.

For `decoder.parallel_fraction` of the examples (the paper's 0.75) the decoder input is all
MASK tokens without a causal mask, and every token is predicted at once; the rest are
teacher-forced. There is no contrastive loss and no text tower: zero-shot classification
scores each class prompt's log-likelihood given the image (evaluate/zeroshot.py), and the
few-shot probe reads `encode_image`, the encoder's pooled features.

Config schema: two_tower's `image` and compute keys, plus `decoder`:

    decoder.variant            named size (e.g. "B"); fields below override it
    decoder.{width, depth, mlp_dim, num_heads}
    decoder.vocab_size         the tokenizer's ids (0 is padding)
    decoder.max_len            longest caption in tokens (data.max_len <= this)
    decoder.parallel_fraction  share of examples trained by parallel prediction
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from contrastive_jax.errors import ConfigError
from contrastive_jax.losses.captioning import caption_log_likelihood, caption_loss
from contrastive_jax.models import two_tower
from contrastive_jax.models.decoder import Decoder
from contrastive_jax.models.sizes import resolve_size
from contrastive_jax.models.two_tower import image_tower, l2_normalize


def default_config() -> ml_collections.ConfigDict:
    """Image tower and compute keys of two_tower, a `decoder` group instead of `text`."""
    base = two_tower.default_config()
    decoder = dict(variant="mu", width=None, depth=None, mlp_dim=None, num_heads=None,
                   vocab_size=1000, max_len=16, parallel_fraction=0.75)
    image = dict(base.image.to_dict(), pool="gap")
    return ml_collections.ConfigDict(
        dict(name="cappa", dtype=base.dtype, param_dtype=base.param_dtype, remat=base.remat,
             scan_layers=base.scan_layers, image=image, decoder=decoder), type_safe=False)


class CapPa(nnx.Module):
    """ViT encoder + captioning decoder; trained by `caption_loss`, scored by
    `class_log_likelihoods`."""

    def __init__(self, config: Mapping[str, Any], *, rngs: nnx.Rngs):
        dec = config["decoder"]
        fraction = dec["parallel_fraction"]
        if isinstance(fraction, bool) or not 0.0 <= float(fraction) <= 1.0:
            raise ConfigError("config key 'model.decoder.parallel_fraction' must be in [0, 1], "
                              f"got {fraction!r}")
        self.parallel_fraction = float(fraction)
        isize = resolve_size(config["image"], tower="image", with_patch=True)
        self.img = image_tower(config, isize, rngs)
        dsize = resolve_size(dec, tower="decoder", with_patch=False)
        self.decoder = Decoder(**dsize, vocab_size=dec["vocab_size"], max_len=dec["max_len"],
                               memory_width=isize["width"], dtype=config["dtype"],
                               param_dtype=config["param_dtype"], remat=config["remat"],
                               scan_layers=config["scan_layers"], rngs=rngs)

    def encode_image(self, images: jax.Array, mask_noise: jax.Array | None = None) -> jax.Array:
        """The encoder's pooled features, unit-norm float32 [B, width] (the few-shot probe's)."""
        return l2_normalize(self.img(images, mask_noise=mask_noise))

    def caption_logits(self, images: jax.Array, targets: jax.Array, parallel: jax.Array,
                       mask_noise: jax.Array | None = None) -> jax.Array:
        """[B, L, V] logits of each target token given the image."""
        _, tokens = self.img(images, return_tokens=True, mask_noise=mask_noise)
        return self.decoder(targets, tokens, parallel)

    def caption_loss(self, images: jax.Array, targets: jax.Array, parallel: jax.Array,
                     mask_noise: jax.Array | None = None) -> tuple[jax.Array, dict]:
        """Mean token cross-entropy of the batch's captions (see losses/captioning.py)."""
        return caption_loss(self.caption_logits(images, targets, parallel, mask_noise), targets)

    def class_log_likelihoods(self, images: jax.Array, prompts: jax.Array,
                              template_average: str = "likelihood") -> jax.Array:
        """images [B, ...], prompts [C, T, L] ids -> [B, C]: each class's prompt
        log-likelihood given the image (teacher-forced), over its T templates either the log
        of the mean likelihood ("likelihood") or the mean log-likelihood ("log_likelihood")."""
        n_class, n_templates, length = prompts.shape
        _, tokens = self.img(images, return_tokens=True)
        b, p = images.shape[0], n_class * n_templates
        # Every (image, prompt) pair: the image's tokens repeated once per prompt.
        memory = jnp.repeat(tokens, p, axis=0)
        targets = jnp.tile(prompts.reshape(p, length), (b, 1))
        logits = self.decoder(targets, memory, jnp.zeros((b * p,), bool))
        ll = caption_log_likelihood(logits, targets).reshape(b, n_class, n_templates)
        if template_average == "log_likelihood":
            return ll.mean(axis=-1)
        # The templates as a uniform mixture: one template the captioner finds unlikely for
        # every class lowers each class alike instead of deciding between them.
        return jax.nn.logsumexp(ll, axis=-1) - jnp.log(n_templates)
