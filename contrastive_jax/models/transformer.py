"""Pre-LN transformer encoder shared by the image (ViT) and text towers.

Conventions follow big_vision's ViT: xavier-uniform kernels in attention and MLP, zero
biases, LayerNorm epsilon 1e-6. Parameters live in `param_dtype`; matmuls run in `dtype`.
LayerNorm always computes and returns float32 so low-precision runs keep stable statistics.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from contrastive_jax.errors import ConfigError

Array = jax.Array
Dtype = Any

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
_DENSE_INIT = nnx.initializers.xavier_uniform()


def parse_dtype(name: str | Dtype, key: str = "model.dtype") -> Dtype:
    """Maps "float32" | "bfloat16" (or a dtype) to a jnp dtype; any other name is a
    ConfigError naming the config key `key` it came from."""
    if isinstance(name, str):
        if name not in _DTYPES:
            raise ConfigError(f"config key {key!r}: unknown dtype {name!r}; expected one of "
                              f"{sorted(_DTYPES)}")
        return _DTYPES[name]
    return jnp.dtype(name).type


def layer_norm(width: int, param_dtype: Dtype, rngs: nnx.Rngs) -> nnx.LayerNorm:
    """LayerNorm that computes in float32 regardless of the compute dtype."""
    return nnx.LayerNorm(width, epsilon=1e-6, dtype=jnp.float32, param_dtype=param_dtype,
                         rngs=rngs)


def attention(width: int, num_heads: int, dtype: Dtype, param_dtype: Dtype,
              rngs: nnx.Rngs) -> nnx.MultiHeadAttention:
    """Multi-head attention without dropout (contrastive pretraining runs without it)."""
    if width % num_heads:
        raise ValueError(f"width {width} is not divisible by num_heads {num_heads}.")
    # keep_rngs=False: no dropout, so no RNG state should end up in the model's state.
    return nnx.MultiHeadAttention(
        num_heads=num_heads, in_features=width, dtype=dtype, param_dtype=param_dtype,
        kernel_init=_DENSE_INIT, bias_init=nnx.initializers.zeros_init(),
        decode=False, deterministic=True, keep_rngs=False, rngs=rngs)


def query_rows(x: Array, index: Array, axis: int = 1) -> Array:
    """Each sequence's row `index[b]` of x's `axis` (the query axis), kept as a length-1
    axis: [B, L, ...] -> [B, 1, ...]."""
    shape = [1] * x.ndim
    shape[0] = index.shape[0]
    x = jnp.broadcast_to(x, (index.shape[0], *x.shape[1:]))
    return jnp.take_along_axis(x, index.reshape(shape), axis=axis)


def attention_mask(mask: Array | None) -> Array | None:
    """[B, L] key-validity mask -> [B, 1, 1, L], broadcastable over heads and queries; a
    [B, 1, Lq, Lk] mask (e.g. causal) is used as it is."""
    if mask is None:
        return None
    return (mask if mask.ndim == 4 else mask[:, None, None, :]).astype(bool)


class MlpBlock(nnx.Module):
    """Two-layer GELU feed-forward block."""

    def __init__(self, width: int, mlp_dim: int, *, dtype: Dtype, param_dtype: Dtype,
                 rngs: nnx.Rngs):
        kw = dict(dtype=dtype, param_dtype=param_dtype, kernel_init=_DENSE_INIT, rngs=rngs)
        self.fc1 = nnx.Linear(width, mlp_dim, **kw)
        self.fc2 = nnx.Linear(mlp_dim, width, **kw)

    def __call__(self, x: Array) -> Array:
        return self.fc2(nnx.gelu(self.fc1(x)))


class EncoderBlock(nnx.Module):
    """x + MHA(LN(x)), then x + MLP(LN(x))."""

    def __init__(self, width: int, mlp_dim: int, num_heads: int, *, dtype: Dtype,
                 param_dtype: Dtype, rngs: nnx.Rngs):
        self.dtype = dtype
        self.ln1 = layer_norm(width, param_dtype, rngs)
        self.attn = attention(width, num_heads, dtype, param_dtype, rngs)
        self.ln2 = layer_norm(width, param_dtype, rngs)
        self.mlp = MlpBlock(width, mlp_dim, dtype=dtype, param_dtype=param_dtype, rngs=rngs)

    def __call__(self, x: Array, mask: Array | None = None, query: Array | None = None
                 ) -> Array:
        """x: [B, L, D]; mask: optional [B, L] (True where the token is real) or
        [B, 1, L, L]. With `query` [B] int, only position query[b] is computed as a query
        (every token is still a key and value): the output is [B, 1, D], equal to that row
        of the full block's output. A tower that pools one position needs no more from its
        last block, and the rows it skips are most of that block's attention and MLP."""
        y = self.ln1(x).astype(self.dtype)
        queries = y
        if query is not None:
            x, queries = query_rows(x, query), query_rows(y, query)
            if mask is not None and mask.ndim == 4:  # causal: the query's row of the mask
                mask = query_rows(mask, query, axis=2)
        x = x + self.attn(queries, y, mask=attention_mask(mask)).astype(x.dtype)
        y = self.ln2(x).astype(self.dtype)
        return x + self.mlp(y).astype(x.dtype)


# `model.remat` values -> jax.checkpoint policies (None: save nothing, recompute the block).
REMAT_POLICIES = {
    "full": None,
    "nothing_saveable": jax.checkpoint_policies.nothing_saveable,
    "dots_saveable": jax.checkpoint_policies.dots_saveable,
    "dots_with_no_batch_dims_saveable":
        jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
    "everything_saveable": jax.checkpoint_policies.everything_saveable,
}
REMAT_NAMES = ("none", *REMAT_POLICIES)


def check_remat(remat: str) -> None:
    if remat not in REMAT_NAMES:
        raise ConfigError(f"config key 'model.remat': unknown remat {remat!r}; expected one "
                          f"of {REMAT_NAMES}")


def build_blocks(block: Callable[[nnx.Rngs], nnx.Module], depth: int, scan_layers: bool,
                 rngs: nnx.Rngs) -> nnx.Module:
    """`depth` blocks made by `block(rngs)`: an nnx.List (`blocks/0/...`), or with
    `scan_layers` one block whose params have a leading depth axis (`blocks/...`)."""
    if scan_layers:
        # One key per layer, then vmap the constructor: params get a leading depth axis.
        return nnx.split_rngs(splits=depth)(nnx.vmap(block, in_axes=0, out_axes=0))(rngs)
    return nnx.List([block(rngs) for _ in range(depth)])


def _apply_block(block: nnx.Module, x: Array, *args: Any) -> Array:
    return block(x, *args)


def run_blocks(blocks: nnx.Module, x: Array, *args: Any, remat: str, scan_layers: bool,
               last_args: tuple = ()) -> Array:
    """x through every block of `build_blocks`, each called as `block(x, *args)`, the
    last one as `block(x, *args, *last_args)`.

    `remat` (one of REMAT_NAMES) rematerialises each block in the backward pass; stacked
    blocks run under `jax.lax.scan`, traced and compiled once whatever the depth.
    """
    if scan_layers:
        # A plain lax.scan over the stacked param state: blocks hold only params (no
        # dropout RNGs, no batch stats), so nothing needs to flow back out of the loop.
        graphdef, state = nnx.split(blocks)

        def layer(carry: Array, layer_state: Any, *extra: Any) -> Array:
            return nnx.merge(graphdef, layer_state)(carry, *args, *extra)

        if remat != "none":
            layer = jax.checkpoint(layer, policy=REMAT_POLICIES[remat])
        scanned = jax.tree.map(lambda leaf: leaf[:-1], state) if last_args else state
        x = jax.lax.scan(lambda c, s: (layer(c, s), None), x, scanned)[0]
        if not last_args:
            return x
        return layer(x, jax.tree.map(lambda leaf: leaf[-1], state), *last_args)
    apply = _apply_block
    if remat != "none":
        apply = nnx.remat(_apply_block, policy=REMAT_POLICIES[remat])
    depth = len(blocks)
    for i, block in enumerate(blocks):
        x = apply(block, x, *args, *(last_args if i == depth - 1 else ()))
    return x


class Encoder(nnx.Module):
    """A stack of `depth` encoder blocks followed by a final LayerNorm (float32 output).

    `remat` (one of REMAT_NAMES) rematerialises each block in the backward pass: the
    policy says which intermediates are kept; "none" keeps all (no recomputation).
    `scan_layers` stores the blocks as one block whose params have a leading depth axis
    (`blocks/ln1/scale` [depth, width] instead of `blocks/0/ln1/scale` [width]) and runs
    them under `jax.lax.scan`: the block is traced and compiled once, whatever the depth.
    """

    def __init__(self, width: int, depth: int, mlp_dim: int, num_heads: int, *,
                 dtype: Dtype, param_dtype: Dtype, rngs: nnx.Rngs, remat: str = "none",
                 scan_layers: bool = False):
        check_remat(remat)
        self.remat, self.scan_layers, self.depth = remat, bool(scan_layers), int(depth)

        def block(rngs: nnx.Rngs) -> EncoderBlock:
            return EncoderBlock(width, mlp_dim, num_heads, dtype=dtype,
                                param_dtype=param_dtype, rngs=rngs)

        self.blocks = build_blocks(block, depth, self.scan_layers, rngs)
        self.encoder_norm = layer_norm(width, param_dtype, rngs)

    def __call__(self, x: Array, mask: Array | None = None, query: Array | None = None
                 ) -> Array:
        """With `query` [B] int: only each sequence's position query[b] comes out of the
        last block (see EncoderBlock), as [B, 1, D]."""
        if query is not None and not self.depth:  # no block to pick the rows for us
            x, query = query_rows(x, query), None
        x = run_blocks(self.blocks, x, mask, remat=self.remat, scan_layers=self.scan_layers,
                       last_args=() if query is None else (query,))
        return self.encoder_norm(x)


class MAPHead(nnx.Module):
    """Multihead attention pooling: a learned probe attends over the (masked) tokens."""

    def __init__(self, width: int, mlp_dim: int, num_heads: int, *, dtype: Dtype,
                 param_dtype: Dtype, rngs: nnx.Rngs):
        self.dtype = dtype
        self.probe = nnx.Param(_DENSE_INIT(rngs.params(), (1, 1, width), param_dtype))
        self.attn = attention(width, num_heads, dtype, param_dtype, rngs)
        self.ln = layer_norm(width, param_dtype, rngs)
        self.mlp = MlpBlock(width, mlp_dim, dtype=dtype, param_dtype=param_dtype, rngs=rngs)

    def __call__(self, x: Array, mask: Array | None = None) -> Array:
        """x: [B, L, D], mask: optional [B, L] -> [B, D] float32."""
        probe = jnp.broadcast_to(self.probe[...], (x.shape[0], 1, x.shape[-1]))
        y = self.attn(probe.astype(self.dtype), x.astype(self.dtype),
                      mask=attention_mask(mask)).astype(jnp.float32)
        y = y + self.mlp(self.ln(y).astype(self.dtype)).astype(jnp.float32)
        return y[:, 0]


def posemb_sincos_2d(h: int, w: int, width: int, temperature: float = 10_000.0) -> np.ndarray:
    """Fixed 2-D sin-cos position embeddings (MoCo v3 layout), [1, h*w, width] float32."""
    if width % 4:
        raise ValueError(f"sincos2d position embeddings need width % 4 == 0, got {width}.")
    y, x = np.mgrid[:h, :w]
    omega = np.arange(width // 4) / max(width // 4 - 1, 1)
    omega = 1.0 / (temperature**omega)
    y = np.einsum("m,d->md", y.flatten(), omega)
    x = np.einsum("m,d->md", x.flatten(), omega)
    pe = np.concatenate([np.sin(x), np.cos(x), np.sin(y), np.cos(y)], axis=1)
    return pe[None].astype(np.float32)
