"""Two-tower (CLIP / SigLIP / LiT) model: ViT image tower + text transformer tower.

Config schema (see `default_config`; None means "take it from the variant"):

    name              "two_tower"
    embed_dim         shared embedding size D of both towers' outputs
    temperature_init  initial t; stored as the param `t_log = log(t)`. SigLIP 10, CLIP 1/0.07
    bias_init         initial b (SigLIP -10). None: no `b` param at all, `bias()` returns 0.0
                      (CLIP), so the optimizer, weight decay and checkpoints never see it
    dtype             compute dtype of activations / matmuls: "float32" | "bfloat16"
    param_dtype       parameter dtype, "float32" (t_log and b are always float32)
    remat             per-block rematerialisation: "none" | "full" | "dots_saveable" |
                      "nothing_saveable" | ... (see transformer.REMAT_NAMES)
    scan_layers       run each tower's blocks under a scan over layers: compile time stops
                      growing with depth; params are stacked (see models/layer_stack.py)
    image.variant     e.g. "B/16": named size + patch size; fields below override it
    image.{width, depth, mlp_dim, num_heads, patch_size}
    image.image_size  int or (H, W); must be divisible by the patch size
    image.channels    input channels (1 for grey-scale, 3 for RGB)
    image.pool        "map" | "gap" | "cls"
    image.posemb      "learn" | "sincos2d"
    image.pre_norm    LayerNorm before the encoder (CLIP's pre_layrnorm)
    image.mask_ratio  FLIP: share of patch tokens the train step drops at random (0: none;
                      evals never mask; `train.unmask_from` ends it)
    image.head        always project to embed_dim (else only when width != embed_dim)
    image.naflex      SigLIP 2's NaFlex tower (models/naflex.py): images as patch sequences
                      at their own aspect ratio; image_size / patch_size is the position
                      table's grid; pool "map" | "gap"
    text.variant      e.g. "B" (no patch size); fields below override it
    text.{width, depth, mlp_dim, num_heads}
    text.vocab_size   token id 0 is padding
    text.max_len      longest token sequence accepted
    text.pool         "last" | "first" | "mean" | "map" | "final" (SigLIP: last position,
                      no pad masking; see TextTransformer)
    text.head         as image.head
    text.causal       causal self-attention (CLIP's text tower)
    proj_bias         the projection heads have a bias (CLIP's have none)
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from contrastive_jax.errors import ConfigError
from contrastive_jax.losses.mixup import with_partner
from contrastive_jax.models.naflex import NaFlexViT
from contrastive_jax.models.sizes import resolve_size
from contrastive_jax.models.text import TextTransformer
from contrastive_jax.models.transformer import parse_dtype
from contrastive_jax.models.vit import ViT


def default_config() -> ml_collections.ConfigDict:
    """Full two_tower schema with defaults: a tiny SigLIP-style model for 28x28 grey images."""
    tower = dict(variant=None, width=None, depth=None, mlp_dim=None, num_heads=None)
    image = dict(tower, variant="mu/4", patch_size=None, image_size=28, channels=1,
                 pool="map", posemb="learn", head=True, pre_norm=False, mask_ratio=0.0,
                 naflex=False)
    text = dict(tower, variant="mu", vocab_size=1000, max_len=16, pool="last", head=True,
                causal=False)
    # type_safe=False: override values may change type (e.g. variant None -> "B/16").
    return ml_collections.ConfigDict(
        dict(name="two_tower", embed_dim=128, temperature_init=10.0, bias_init=-10.0,
             dtype="float32", param_dtype="float32", remat="none", proj_bias=True,
             scan_layers=False,
             image=image, text=text),
        type_safe=False)


def l2_normalize(z: jax.Array) -> jax.Array:
    """Row-wise L2 normalisation in float32; the clamp keeps gradients finite at z = 0."""
    z = z.astype(jnp.float32)
    return z * jax.lax.rsqrt(jnp.maximum(jnp.sum(z * z, axis=-1, keepdims=True), 1e-12))


def projection_head(width: int, embed_dim: int, head: bool, bias: bool, param_dtype: Any,
                rngs: nnx.Rngs) -> nnx.Linear | None:
    if not head and width == embed_dim:
        return None
    # lecun-normal, not zeros: two zero-initialised heads give zero embeddings and zero
    # gradients for both towers (big_vision's SigLIP configs set head_zeroinit=False too).
    # The head runs in float32: it is small and produces the final embedding.
    return nnx.Linear(width, embed_dim, use_bias=bias, dtype=jnp.float32,
                      param_dtype=param_dtype, kernel_init=nnx.initializers.lecun_normal(),
                      rngs=rngs)


def image_tower(config: Mapping[str, Any], size: Mapping[str, int], rngs: nnx.Rngs
                ) -> ViT | NaFlexViT:
    """The ViT (or NaFlex ViT) of `config.image` (shared by the one- and two-tower models)."""
    img = config["image"]
    tower = NaFlexViT if img.get("naflex") else ViT
    return tower(**size, image_size=img["image_size"], channels=img["channels"],
               pool=img["pool"], posemb=img["posemb"], pre_norm=img["pre_norm"],
               mask_ratio=img["mask_ratio"], dtype=config["dtype"],
               param_dtype=config["param_dtype"], remat=config["remat"],
               scan_layers=config["scan_layers"], rngs=rngs)


class TwoTower(nnx.Module):
    """Image and text towers mapping into a shared, L2-normalised embedding space.

    Expects a complete config; `create_model` fills missing keys from `default_config`.
    """

    def __init__(self, config: Mapping[str, Any], *, rngs: nnx.Rngs):
        img, txt = config["image"], config["text"]
        dtype, pdt = config["dtype"], config["param_dtype"]
        embed_dim = self._init_scale_and_bias(config)

        isize = resolve_size(img, tower="image", with_patch=True)
        self.img = image_tower(config, isize, rngs)
        tsize = resolve_size(txt, tower="text", with_patch=False)
        self.txt = TextTransformer(**tsize, vocab_size=txt["vocab_size"],
                                   max_len=txt["max_len"], pool=txt["pool"],
                                   causal=txt["causal"], dtype=dtype, param_dtype=pdt,
                                   remat=config["remat"], scan_layers=config["scan_layers"],
                                   rngs=rngs)
        pdt = parse_dtype(pdt, key="model.param_dtype")
        bias = bool(config["proj_bias"])
        self.img_head = projection_head(isize["width"], embed_dim, img["head"], bias, pdt, rngs)
        self.txt_head = projection_head(tsize["width"], embed_dim, txt["head"], bias, pdt, rngs)

    def _init_scale_and_bias(self, config: Mapping[str, Any]) -> int:
        """Checks embed_dim and temperature_init, creates t_log and b; returns embed_dim."""
        embed_dim = int(config["embed_dim"])
        if embed_dim <= 0:
            raise ConfigError(f"config key 'model.embed_dim' must be positive, got {embed_dim}")
        t_init = float(config["temperature_init"])
        if not t_init > 0:
            raise ConfigError(f"config key 'model.temperature_init' must be > 0, got {t_init}")
        self.t_log = nnx.Param(jnp.asarray(math.log(t_init), jnp.float32))
        b_init = config["bias_init"]
        self.b = None if b_init is None else nnx.Param(jnp.asarray(b_init, jnp.float32))
        return embed_dim

    def encode_image(self, images: jax.Array, mask_noise: jax.Array | None = None) -> jax.Array:
        """images [B, H, W, C] float32 -> [B, D] unit-norm float32; mask_noise [B, N]:
        FLIP masking (see ViT)."""
        return self.embed_pooled_image(self.img(images, mask_noise=mask_noise))

    def embed_pooled_image(self, pooled: jax.Array) -> jax.Array:
        """The image tower's pooled features [B, width] -> [B, D] unit-norm float32."""
        z = pooled if self.img_head is None else self.img_head(pooled)
        return l2_normalize(z)

    def encode_text(self, tokens: jax.Array, mix: jax.Array | None = None) -> jax.Array:
        """tokens [B, L] int (0 = pad) -> [B, D] unit-norm float32. `mix`: ZeroVL's text
        mixup weight (losses/mixup.py), applied to the embeddings before normalisation."""
        z = self.txt(tokens)
        if self.txt_head is not None:
            z = self.txt_head(z)
        return l2_normalize(z if mix is None else with_partner(z, mix))

    def __call__(self, images: jax.Array, tokens: jax.Array,
                 mask_noise: jax.Array | None = None,
                 text_mix: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
        """Returns (zimg, ztxt), both [B, D] unit-norm float32."""
        return self.encode_image(images, mask_noise), self.encode_text(tokens, text_mix)

    def temperature(self) -> jax.Array:
        """t = exp(t_log), a float32 scalar."""
        return jnp.exp(self.t_log[...])

    def bias(self) -> jax.Array:
        """b as a float32 scalar; a constant 0.0 when the model was built with bias_init=None."""
        return jnp.zeros((), jnp.float32) if self.b is None else self.b[...]
