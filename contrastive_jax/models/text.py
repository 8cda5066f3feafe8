"""Text transformer tower with a padding mask (token id 0 is padding)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from contrastive_jax.errors import ConfigError
from contrastive_jax.models.transformer import Dtype, Encoder, MAPHead, parse_dtype, query_rows

POOLS = ("last", "first", "mean", "map", "final")
_ONE_POSITION = ("last", "final", "first")  # pools that read one position per sequence
PAD_ID = 0


def last_token_index(mask: jax.Array) -> jax.Array:
    """Index of the last True in each row of a [B, L] mask (0 for an all-pad row)."""
    positions = jnp.arange(mask.shape[1])
    return jnp.max(jnp.where(mask, positions, 0), axis=1)


class TextTransformer(nnx.Module):
    """Token + learned position embeddings -> pre-LN encoder -> final LN -> pool.

    Pad tokens (id 0) are masked out as attention keys and excluded from pooling, so they
    cannot influence any output: a sequence gives the same features however many pads
    follow it. "last" pools the last non-pad token (the EOS the tokenizer appends).
    "final" is big_vision's SigLIP text tower (also Hugging Face's SiglipTextModel): no pad
    masking at all and the output at the final position, so its result depends on the
    padded length; feed it sequences padded to a fixed length, as SigLIP was trained.
    `causal=True` lets each token attend only to itself and earlier tokens (CLIP's text
    tower); with "last" pooling that is transformers' CLIPTextModel, which pools the EOS.
    Returns pooled float32 features [B, width]; `return_tokens=True` also returns the
    encoded tokens [B, L, width] and the [B, L] validity mask.
    """

    def __init__(
        self,
        *,
        width: int,
        depth: int,
        mlp_dim: int,
        num_heads: int,
        vocab_size: int,
        max_len: int,
        pool: str = "last",
        causal: bool = False,
        dtype: str | Dtype = "float32",
        param_dtype: str | Dtype = "float32",
        remat: str = "none",
        scan_layers: bool = False,
        rngs: nnx.Rngs,
    ):
        # The arguments are the run's `model.text.*` keys (and `model.*` for the dtypes).
        if pool not in POOLS:
            raise ConfigError(f"config key 'model.text.pool': unknown text pool {pool!r}; "
                              f"expected one of {POOLS}")
        if vocab_size < 2:
            raise ConfigError(f"config key 'model.text.vocab_size' must be >= 2, got "
                              f"{vocab_size}")
        if max_len < 1:
            raise ConfigError(f"config key 'model.text.max_len' must be >= 1, got {max_len}")
        self.dtype = parse_dtype(dtype)
        pdt = parse_dtype(param_dtype, key="model.param_dtype")
        self.pool, self.max_len, self.causal = pool, int(max_len), bool(causal)
        self.embedding = nnx.Embed(
            vocab_size, width, dtype=self.dtype, param_dtype=pdt,
            embedding_init=nnx.initializers.normal(stddev=0.02), rngs=rngs)
        init = nnx.initializers.normal(stddev=width**-0.5)  # big_vision's posemb scale
        self.pos_embedding = nnx.Param(init(rngs.params(), (1, max_len, width), pdt))
        self.encoder = Encoder(width, depth, mlp_dim, num_heads, dtype=self.dtype,
                               param_dtype=pdt, remat=remat, scan_layers=scan_layers,
                               rngs=rngs)
        if pool == "map":
            self.map_head = MAPHead(width, mlp_dim, num_heads, dtype=self.dtype,
                                    param_dtype=pdt, rngs=rngs)

    def __call__(
        self, tokens: jax.Array, *, return_tokens: bool = False
    ) -> jax.Array | tuple[jax.Array, jax.Array, jax.Array]:
        """tokens: int [B, L] with L <= max_len, right-padded with 0."""
        if tokens.ndim != 2 or tokens.shape[1] > self.max_len:
            raise ValueError(f"TextTransformer expects tokens [B, L<={self.max_len}], "
                             f"got {tokens.shape}.")
        length = tokens.shape[1]
        # "final" attends over pads too, exactly as big_vision / transformers' SigLIP do.
        mask = jnp.ones_like(tokens, bool) if self.pool == "final" else tokens != PAD_ID
        x = self.embedding(tokens)
        x = x + self.pos_embedding[:, :length].astype(x.dtype)
        attend = mask
        if self.causal:
            attend = mask[:, None, None, :] & jnp.tril(jnp.ones((length, length), bool))
        if self.pool in _ONE_POSITION:
            index = self._pooled_position(mask)
            if not return_tokens:
                # Only the pooled position's output is needed: the last block computes that
                # query alone (exactly that row of the full result, at a fraction of the cost).
                return self.encoder(x, attend, query=index)[:, 0].astype(jnp.float32)
        x = self.encoder(x, attend)  # float32

        if self.pool in _ONE_POSITION:
            pooled = query_rows(x, index)[:, 0]
        elif self.pool == "mean":
            # where, not multiply: pad rows contribute exactly nothing, even if non-finite.
            total = jnp.sum(jnp.where(mask[..., None], x, 0.0), axis=1)
            pooled = total / jnp.maximum(jnp.sum(mask, axis=1, keepdims=True), 1)
        else:  # map
            pooled = self.map_head(x, mask)
        pooled = pooled.astype(jnp.float32)
        return (pooled, x, mask) if return_tokens else pooled

    def _pooled_position(self, mask: jax.Array) -> jax.Array:
        """[B] index of the position a one-position pool reads."""
        if self.pool == "last":
            return last_token_index(mask)
        return jnp.full(mask.shape[:1], mask.shape[1] - 1 if self.pool == "final" else 0)
