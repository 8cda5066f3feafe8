"""Image-to-text transformer decoder (CapPa, LocCa): causal or parallel self-attention over
the caption, cross-attention to the image tower's patch tokens, next-token logits.

Sized by the same named sizes as the towers (`model.decoder.variant`), its attention and MLP
kernels are named like the encoder's (`self_attn/query/kernel`, `cross_attn/...`, `mlp/fc1`),
so the default sharding rules put heads and MLP over `model`, and FSDP applies as to the
rest. Two ids beyond the text vocabulary are the decoder's own: BOS (`vocab_size`) starts
every teacher-forced input, MASK (`vocab_size + 1`) fills parallel-prediction inputs.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from contrastive_jax.models.transformer import (
    Dtype,
    MlpBlock,
    attention,
    build_blocks,
    check_remat,
    layer_norm,
    parse_dtype,
    run_blocks,
)

Array = jax.Array


class DecoderBlock(nnx.Module):
    """x + SelfAttn(LN(x)), x + CrossAttn(LN(x), image tokens), x + MLP(LN(x))."""

    def __init__(self, width: int, mlp_dim: int, num_heads: int, *, dtype: Dtype,
                 param_dtype: Dtype, rngs: nnx.Rngs):
        self.dtype = dtype
        self.ln1 = layer_norm(width, param_dtype, rngs)
        self.self_attn = attention(width, num_heads, dtype, param_dtype, rngs)
        self.ln2 = layer_norm(width, param_dtype, rngs)
        self.cross_attn = attention(width, num_heads, dtype, param_dtype, rngs)
        self.ln3 = layer_norm(width, param_dtype, rngs)
        self.mlp = MlpBlock(width, mlp_dim, dtype=dtype, param_dtype=param_dtype, rngs=rngs)

    def __call__(self, x: Array, self_mask: Array, memory: Array, memory_mask: Array) -> Array:
        """x [B, L, D]; self_mask [B, 1, L, L]; memory [B, N, D]; memory_mask [B, 1, 1, N]."""
        y = self.ln1(x).astype(self.dtype)
        x = x + self.self_attn(y, mask=self_mask).astype(x.dtype)
        y = self.ln2(x).astype(self.dtype)
        x = x + self.cross_attn(y, memory, mask=memory_mask).astype(x.dtype)
        y = self.ln3(x).astype(self.dtype)
        return x + self.mlp(y).astype(x.dtype)


def self_attention_mask(parallel: Array, length: int) -> Array:
    """[B, 1, L, L]: causal rows for teacher forcing; all-True rows for parallel prediction
    (every position sees every mask token and predicts its own token at once)."""
    causal = jnp.tril(jnp.ones((length, length), bool))
    return jnp.where(parallel[:, None, None, None], True, causal[None, None])


class Decoder(nnx.Module):
    """Token + position embeddings -> blocks -> final LN -> logits over the text vocabulary.

    `memory_width`: the image tokens' width; they are projected to `width` when it differs.
    """

    def __init__(self, *, width: int, depth: int, mlp_dim: int, num_heads: int,
                 vocab_size: int, max_len: int, memory_width: int, dtype: str | Dtype,
                 param_dtype: str | Dtype, remat: str = "none", scan_layers: bool = False,
                 rngs: nnx.Rngs):
        check_remat(remat)
        self.dtype = parse_dtype(dtype)
        pdt = parse_dtype(param_dtype, key="model.param_dtype")
        self.vocab_size, self.max_len = int(vocab_size), int(max_len)
        self.bos_id, self.mask_id = self.vocab_size, self.vocab_size + 1
        self.remat, self.scan_layers = remat, bool(scan_layers)
        self.embedding = nnx.Embed(vocab_size + 2, width, dtype=self.dtype, param_dtype=pdt,
                                   embedding_init=nnx.initializers.normal(stddev=0.02),
                                   rngs=rngs)
        init = nnx.initializers.normal(stddev=width**-0.5)
        self.pos_embedding = nnx.Param(init(rngs.params(), (1, max_len, width), pdt))
        self.memory_proj = (nnx.Linear(memory_width, width, dtype=self.dtype, param_dtype=pdt,
                                       rngs=rngs) if memory_width != width else None)

        def block(rngs: nnx.Rngs) -> DecoderBlock:
            return DecoderBlock(width, mlp_dim, num_heads, dtype=self.dtype, param_dtype=pdt,
                                rngs=rngs)

        self.blocks = build_blocks(block, depth, self.scan_layers, rngs)
        self.decoder_norm = layer_norm(width, pdt, rngs)
        # The head runs in float32: its logits feed a softmax over the whole vocabulary.
        self.head = nnx.Linear(width, vocab_size, dtype=jnp.float32, param_dtype=pdt,
                               kernel_init=nnx.initializers.zeros_init(), rngs=rngs)

    def inputs(self, targets: Array, parallel: Array) -> Array:
        """Decoder inputs for [B, L] target ids: BOS + targets[:-1] (teacher forcing), or
        all MASK where `parallel` [B] is True."""
        shifted = jnp.concatenate(
            [jnp.full((targets.shape[0], 1), self.bos_id, targets.dtype), targets[:, :-1]], 1)
        return jnp.where(parallel[:, None], self.mask_id, shifted)

    def __call__(self, targets: Array, memory: Array, parallel: Array,
                 memory_mask: Array | None = None) -> Array:
        """targets [B, L] ids (L <= max_len); memory [B, N, memory_width] image tokens;
        parallel [B] bool; memory_mask [B, N] (True: a real image token). Returns float32
        logits [B, L, vocab_size] predicting targets[:, i] at position i."""
        b, length = targets.shape
        if length > self.max_len:
            raise ValueError(f"Decoder takes at most {self.max_len} tokens, got {length}")
        x = self.embedding(self.inputs(targets, parallel))
        x = x + self.pos_embedding[:, :length].astype(x.dtype)
        memory = memory.astype(self.dtype)
        if self.memory_proj is not None:
            memory = self.memory_proj(memory)
        if memory_mask is None:
            memory_mask = jnp.ones(memory.shape[:2], bool)
        x = run_blocks(self.blocks, x, self_attention_mask(parallel, length), memory,
                       memory_mask[:, None, None, :], remat=self.remat,
                       scan_layers=self.scan_layers)
        return self.head(self.decoder_norm(x))
