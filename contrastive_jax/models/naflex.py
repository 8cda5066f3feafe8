"""NaFlex image tower (SigLIP 2's NaViT + FlexiViT): images at their own aspect ratio.

Input is a batch of patch sequences (`NaFlexImages`): each image resized so that its patch
grid (h, w) fits a budget of N patches (data/naflex.py), cut into h*w patches of p*p*C
values in (row, column, channel) order, padded to N. The learned position table (a
g x g grid, g = image_size / patch_size) is resized bilinearly, with antialiasing, to each
image's own (h, w) grid, exactly as transformers' `Siglip2VisionEmbeddings` and big_vision's
`naflex_vit._pos_emb_resize` do. Padding patches are masked as attention keys and in the
MAP / GAP pooling, so an image's embedding does not depend on N.

A plain [B, H, W, C] image batch is accepted too (every patch real, grid H/p x W/p): the
fixed-size pipelines (evals, exports, the train step) run a NaFlex model unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

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
)

POOLS = ("map", "gap")


class NaFlexImages(NamedTuple):
    """A batch of patchified images (a pytree: passes through jit and shard_map)."""

    patches: jax.Array  # [B, N, p*p*C] float, (row, column, channel) order per patch
    mask: jax.Array  # [B, N] bool or int, true for an image's patches, false for padding
    shapes: jax.Array  # [B, 2] int, each image's patch grid (h, w); h*w <= N


def patchify(images: jax.Array, patch: int) -> NaFlexImages:
    """[B, H, W, C] images (H, W multiples of `patch`) -> NaFlexImages with every patch
    real, in transformers' Siglip2 layout."""
    b, h, w, c = images.shape
    gh, gw = h // patch, w // patch
    x = images.reshape(b, gh, patch, gw, patch, c).transpose(0, 1, 3, 2, 4, 5)
    patches = x.reshape(b, gh * gw, patch * patch * c)
    return NaFlexImages(patches, jnp.ones((b, gh * gw), bool),
                        jnp.broadcast_to(jnp.asarray([gh, gw], jnp.int32), (b, 2)))


def posemb_resize_weights(shapes: jax.Array, grid: int, length: int) -> jax.Array:
    """[B, length, grid*grid] float32 weights W with W @ table = the g x g position table
    resized (bilinear, antialiased, half-pixel centres: torch's `F.interpolate(mode=
    "bilinear", align_corners=False, antialias=True)`, jax's `scale_and_translate`) to
    each image's (h, w) grid, flattened row-major; padding positions repeat position 0 (as
    transformers does). Separable: a row weight times a column weight."""
    sizes = shapes.astype(jnp.int32)[:, None, :]  # [B, 1, 2]
    pos = jnp.arange(length, dtype=jnp.int32)[None, :, None]  # [1, L, 1]
    rows = pos // sizes[..., 1:]
    index = jnp.concatenate([rows, pos - rows * sizes[..., 1:]], axis=-1)  # [B, L, 2]
    index = jnp.where(pos < jnp.prod(sizes, axis=-1, keepdims=True), index, 0)
    scale = grid / sizes.astype(jnp.float32)  # input pixels per output pixel
    support = jnp.maximum(scale, 1.0)  # the triangle widens when shrinking (antialias)
    center = (index.astype(jnp.float32) + 0.5) * scale - 0.5
    source = jnp.arange(grid, dtype=jnp.float32)
    w = jnp.maximum(1.0 - jnp.abs(source - center[..., None]) / support[..., None], 0.0)
    w = w / jnp.sum(w, axis=-1, keepdims=True)  # [B, L, 2, grid]
    both = w[..., 0, :, None] * w[..., 1, None, :]
    return both.reshape(*both.shape[:2], grid * grid)


def _square(size: int | Sequence[int], key: str) -> int:
    if isinstance(size, int):
        return size
    if len(set(size)) != 1:
        raise ConfigError(f"config key 'model.image.{key}' must be square with "
                          f"model.image.naflex=True, got {tuple(size)}")
    return int(size[0])


class NaFlexViT(nnx.Module):
    """Patch embedding (Linear) + resized learned position table -> pre-LN encoder with
    a padding mask -> final LN -> masked MAP / GAP pool. Returns [B, width] float32 (and
    with `return_tokens` the encoded tokens [B, N, width], padding rows included)."""

    def __init__(
        self, *, width: int, depth: int, mlp_dim: int, num_heads: int,
        patch_size: int | Sequence[int], image_size: int | Sequence[int], channels: int = 3,
        pool: str = "map", posemb: str = "learn", pre_norm: bool = False,
        dtype: str | Dtype = "float32", param_dtype: str | Dtype = "float32", remat: str = "none",
        scan_layers: bool = False, mask_ratio: float = 0.0, rngs: nnx.Rngs,
    ):
        if pool not in POOLS:
            raise ConfigError(f"config key 'model.image.pool': {pool!r} with "
                              f"model.image.naflex=True; expected one of {POOLS}")
        if posemb != "learn":
            raise ConfigError(f"config key 'model.image.posemb': {posemb!r} with "
                              "model.image.naflex=True; NaFlex resizes a learned table: 'learn'")
        if mask_ratio:
            raise ConfigError("config key 'model.image.mask_ratio' must be 0 with "
                              "model.image.naflex=True (padding already varies the tokens)")
        patch_size = _square(patch_size, "patch_size")
        image_size = _square(image_size, "image_size")
        if image_size % patch_size:
            raise ConfigError(f"config key 'model.image.image_size' ({image_size}) is not "
                              f"divisible by patch_size {patch_size}")
        self.dtype = parse_dtype(dtype)
        pdt = parse_dtype(param_dtype, key="model.param_dtype")
        self.pool, self.channels, self.patch = pool, int(channels), (patch_size, patch_size)
        self.image_size = (image_size, image_size)
        g = self.posemb_grid = image_size // patch_size
        self.grid = (g, g)
        self.num_patches = self.kept_patches = g * g
        self.mask_ratio = 0.0
        self.embedding = nnx.Linear(patch_size * patch_size * self.channels, width,
                                    dtype=self.dtype, param_dtype=pdt, rngs=rngs)
        init = nnx.initializers.normal(stddev=width**-0.5)  # big_vision's scale
        self.pos_embedding = nnx.Param(init(rngs.params(), (1, g * g, width), pdt))
        self.pre_norm = layer_norm(width, pdt, rngs) if pre_norm else None
        self.encoder = Encoder(width, depth, mlp_dim, num_heads, dtype=self.dtype,
                               param_dtype=pdt, remat=remat, scan_layers=scan_layers,
                               rngs=rngs)
        if pool == "map":
            self.map_head = MAPHead(width, mlp_dim, num_heads, dtype=self.dtype,
                                    param_dtype=pdt, rngs=rngs)

    def __call__(self, images: NaFlexImages | jax.Array, *, return_tokens: bool = False,
                 mask_noise: jax.Array | None = None, replace: jax.Array | None = None,
                 mask_token: jax.Array | None = None) -> jax.Array | tuple[jax.Array, ...]:
        """images: NaFlexImages, or [B, H, W, C] (H, W multiples of the patch). `replace`
        [B, N] bool with `mask_token` [width]: those patch embeddings become the token
        before position embeddings are added (SigLIP 2's masked prediction, as ViT)."""
        if mask_noise is not None:
            raise ValueError("NaFlexViT does not mask patches at random (FLIP)")
        if not isinstance(images, NaFlexImages):
            if images.ndim != 4 or images.shape[-1] != self.channels or any(
                    s % self.patch[0] for s in images.shape[1:3]):
                raise ValueError(f"NaFlexViT expects NaFlexImages or images [B, H, W, "
                                 f"{self.channels}] with H, W multiples of the patch "
                                 f"{self.patch[0]}, got {images.shape}")
            images = patchify(images, self.patch[0])
        patches, mask, shapes = images
        want = self.patch[0] * self.patch[1] * self.channels
        if patches.ndim != 3 or patches.shape[-1] != want or mask.shape != patches.shape[:2]:
            raise ValueError(f"NaFlexViT expects patches [B, N, {want}] and mask [B, N], got "
                             f"{patches.shape} and {mask.shape}")
        mask = mask.astype(bool)
        x = self.embedding(patches.astype(self.dtype))
        if replace is not None:
            x = jnp.where(replace[..., None], mask_token.astype(x.dtype), x)
        weights = posemb_resize_weights(shapes, self.posemb_grid, x.shape[1])
        table = self.pos_embedding[...][0].astype(jnp.float32)
        x = x + (weights @ table).astype(x.dtype)
        if self.pre_norm is not None:
            x = self.pre_norm(x).astype(self.dtype)
        x = self.encoder(x, mask)  # float32, final LayerNorm applied
        if self.pool == "map":
            pooled = self.map_head(x, mask)
        else:  # gap over the image's own patches
            m = mask[..., None].astype(x.dtype)
            pooled = jnp.sum(x * m, axis=1) / jnp.maximum(jnp.sum(m, axis=1), 1.0)
        pooled = pooled.astype(jnp.float32)
        return (pooled, x) if return_tokens else pooled
