"""Vision Transformer image tower (big_vision-style, in Flax NNX)."""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from contrastive_jax.errors import ConfigError
from contrastive_jax.models.transformer import (
    Dtype,
    Encoder,
    MAPHead,
    layer_norm,
    parse_dtype,
    posemb_sincos_2d,
)

POOLS = ("map", "gap", "cls")
POSEMBS = ("learn", "sincos2d")


def _pair(x: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(x, int):
        return (x, x)
    h, w = x
    return (int(h), int(w))


class ViT(nnx.Module):
    """Patchify -> (+ position embeddings) -> pre-LN encoder -> final LN -> pool.

    `pre_norm=True` adds a LayerNorm between the embeddings and the encoder (CLIP's
    `pre_layrnorm`). Returns pooled float32 features [B, width]; with `return_tokens=True`
    also the encoded patch tokens [B, N, width] (float32, class token removed).

    `mask_ratio` > 0 is FLIP's masking (Li et al. 2023): given `mask_noise` [B, N], each
    image keeps only its `kept_patches` tokens of lowest noise (position embeddings added
    first, as in MAE/FLIP), so the encoder runs on fewer tokens. Without noise (evals,
    exports, an unmasked tuning phase) every patch is kept.

    Images of another size (any multiple of the patch) run with the learned position
    embeddings resized to their grid: SigLIP 2's small local views.
    """

    def __init__(
        self,
        *,
        width: int,
        depth: int,
        mlp_dim: int,
        num_heads: int,
        patch_size: int | Sequence[int],
        image_size: int | Sequence[int],
        channels: int = 3,
        pool: str = "map",
        posemb: str = "learn",
        pre_norm: bool = False,
        dtype: str | Dtype = "float32",
        param_dtype: str | Dtype = "float32",
        remat: str = "none",
        scan_layers: bool = False,
        mask_ratio: float = 0.0,
        rngs: nnx.Rngs,
    ):
        # The arguments are the run's `model.image.*` keys (and `model.*` for the dtypes).
        if pool not in POOLS:
            raise ConfigError(f"config key 'model.image.pool': unknown image pool {pool!r}; "
                              f"expected one of {POOLS}")
        if posemb not in POSEMBS:
            raise ConfigError(f"config key 'model.image.posemb': unknown posemb {posemb!r}; "
                              f"expected one of {POSEMBS}")
        if posemb == "sincos2d" and width % 4:
            raise ConfigError(f"config key 'model.image.width' ({width}) must be a multiple "
                              "of 4 for sincos2d position embeddings")
        patch, size = _pair(patch_size), _pair(image_size)
        if size[0] % patch[0] or size[1] % patch[1]:
            raise ConfigError(f"config key 'model.image.image_size' {size} is not divisible by "
                              f"patch_size {patch}")
        self.dtype = parse_dtype(dtype)
        pdt = parse_dtype(param_dtype, key="model.param_dtype")
        self.pool, self.posemb_type = pool, posemb
        self.image_size, self.channels, self.patch = size, int(channels), patch
        self.grid = (size[0] // patch[0], size[1] // patch[1])
        n = self.num_patches = self.grid[0] * self.grid[1]
        self.mask_ratio = float(mask_ratio)
        # FLIP and MAE keep int(N * (1 - ratio)) tokens.
        self.kept_patches = int(n * (1.0 - self.mask_ratio))
        if not 0.0 <= self.mask_ratio < 1.0 or self.kept_patches < 1:
            raise ConfigError(f"config key 'model.image.mask_ratio' must be in [0, 1) and keep "
                              f"at least one of the {n} patches, got {mask_ratio!r}")

        # A stride-p VALID conv is exactly "cut p x p patches + linear"; its kernel layout
        # [p, p, C, width] matches big_vision's `embedding` for checkpoint import.
        self.embedding = nnx.Conv(
            channels, width, kernel_size=patch, strides=patch, padding="VALID",
            dtype=self.dtype, param_dtype=pdt, rngs=rngs)
        if posemb == "learn":
            init = nnx.initializers.normal(stddev=width**-0.5)  # big_vision's scale
            self.pos_embedding = nnx.Param(init(rngs.params(), (1, n, width), pdt))
        if pool == "cls":
            self.cls = nnx.Param(jnp.zeros((1, 1, width), pdt))
        self.pre_norm = layer_norm(width, pdt, rngs) if pre_norm else None
        self.encoder = Encoder(width, depth, mlp_dim, num_heads, dtype=self.dtype,
                               param_dtype=pdt, remat=remat, scan_layers=scan_layers,
                               rngs=rngs)
        if pool == "map":
            self.map_head = MAPHead(width, mlp_dim, num_heads, dtype=self.dtype,
                                    param_dtype=pdt, rngs=rngs)

    def __call__(
        self, images: jax.Array, *, return_tokens: bool = False,
        mask_noise: jax.Array | None = None, replace: jax.Array | None = None,
        mask_token: jax.Array | None = None,
    ) -> jax.Array | tuple[jax.Array, jax.Array]:
        """images: [B, H, W, C] float, already in the model's value range; mask_noise:
        [B, N] float (see the class docstring), or None. `replace` [B, N] bool with
        `mask_token` [width]: those patch embeddings become the token before position
        embeddings are added (masked prediction, as iBOT / TIPS / SigLIP 2)."""
        if images.ndim != 4 or images.shape[-1] != self.channels or any(
                size % patch for size, patch in zip(images.shape[1:3], self.patch, strict=True)):
            raise ValueError(f"ViT expects images [B, H, W, {self.channels}] with H, W "
                             f"multiples of the patch {self.patch} (trained at "
                             f"{self.image_size}), got {images.shape}.")
        x = self.embedding(images.astype(self.dtype))
        b, h, w, d = x.shape
        x = x.reshape(b, h * w, d)
        if replace is not None:
            x = jnp.where(replace[..., None], mask_token.astype(x.dtype), x)
        if self.posemb_type == "learn":
            pe = self.pos_embedding[...]
            if (h, w) != self.grid:  # another size (SigLIP 2's small local views)
                pe = resize_posemb(pe, self.grid, (h, w))
        else:
            pe = jnp.asarray(posemb_sincos_2d(h, w, d))
        # Position embeddings go on the patches before the class token is prepended.
        x = x + pe.astype(x.dtype)
        if mask_noise is not None and self.mask_ratio > 0:
            x = keep_lowest_noise(x, mask_noise, self.kept_patches)
        if self.pool == "cls":
            x = jnp.concatenate([jnp.broadcast_to(self.cls[...], (b, 1, d)).astype(x.dtype), x],
                                axis=1)
        if self.pre_norm is not None:
            x = self.pre_norm(x).astype(self.dtype)
        if self.pool == "cls" and not return_tokens:
            # Only the class token's output is needed: the last block computes it alone.
            pooled = self.encoder(x, query=jnp.zeros((b,), jnp.int32))[:, 0]
            return pooled.astype(jnp.float32)
        x = self.encoder(x)  # float32, final LayerNorm applied

        if self.pool == "map":
            pooled = self.map_head(x)
        elif self.pool == "gap":
            pooled = jnp.mean(x, axis=1)
        else:  # cls
            pooled, x = x[:, 0], x[:, 1:]
        pooled = pooled.astype(jnp.float32)
        return (pooled, x) if return_tokens else pooled


def resize_posemb(posemb: jax.Array, grid: tuple[int, int], new: tuple[int, int]) -> jax.Array:
    """Learned position embeddings [1, gh*gw, D] resized bilinearly to a `new` grid (as
    DINO and FlexiViT run a ViT on crops of another size)."""
    d = posemb.shape[-1]
    table = posemb.reshape(*grid, d).astype(jnp.float32)
    return jax.image.resize(table, (*new, d), "linear").reshape(1, new[0] * new[1], d).astype(
        posemb.dtype)


def keep_lowest_noise(tokens: jax.Array, noise: jax.Array, kept: int) -> jax.Array:
    """[B, N, D] tokens -> [B, kept, D]: each row's `kept` tokens of lowest noise, in the
    order of increasing noise (MAE's random masking; order is irrelevant after position
    embeddings, since the encoder is permutation-equivariant)."""
    if noise.shape != tokens.shape[:2]:
        raise ValueError(f"mask noise {noise.shape} does not match the tokens "
                         f"{tokens.shape[:2]}")
    keep = jnp.argsort(noise, axis=1)[:, :kept]
    return jnp.take_along_axis(tokens, keep[..., None], axis=1)
