"""Builders for the published-recipe configs (configs/recipes/clip_*.py, siglip_*.py, lit_*.py,
clippo_*.py): each recipe file names its sizes and the published figures it must match.

The architecture choices of each family live here once; `bench recipes` checks every
recipe's parameter count and GFLOPs against `recipe.params_paper` / `recipe.gflops_paper`.
Training needs the user's corpus (`data.sources`) and tokenizer; the defaults only let the
config load.
"""

from __future__ import annotations

import ml_collections


def published(params: float, gflops: float | None = None, image_gflops: float | None = None,
              text_gflops: float | None = None, *, hardware: str | None = None,
              topology: str | None = None, batch: int | None = None) -> dict:
    """The recipe's published figures (params; GFLOPs per example, 2 per multiply-add) and
    what it trained on: `hardware` as published, `topology` that as a `plan` target (the GPUs
    themselves, or a TPU slice with as many chips), `batch` the global batch."""
    return dict(params_paper=params, gflops_paper=gflops, image_gflops_paper=image_gflops,
                text_gflops_paper=text_gflops, hardware_paper=hardware,
                topology_paper=topology, batch_paper=batch)


def _common(c: ml_collections.ConfigDict, *, image_size: int, max_len: int, vocab: int,
            batch: int, steps: int, lr: float, weight_decay: float) -> None:
    c.data = dict(max_len=max_len, image_size=image_size, channels=3,
                  tokenizer=dict(vocab_size=vocab))
    c.train = dict(batch_size=batch, steps=steps, log_every=100, checkpoint_every=1000)
    c.optimizer = dict(lr=lr, warmup_steps=min(10_000, steps // 10), weight_decay=weight_decay)


def clip(*, image: str, text: str, embed_dim: int, image_size: int = 224,
         published: dict, batch: int, steps: int) -> ml_collections.ConfigDict:
    """OpenAI CLIP (Radford et al. 2021): class-token image tower after a pre-encoder
    LayerNorm, a causal 77-token text tower pooling the EOS, bias-free projections, softmax
    loss with learned temperature from 1/0.07; BPE vocabulary of 49,408."""
    c = ml_collections.ConfigDict()
    c.model = dict(
        embed_dim=embed_dim, temperature_init=1 / 0.07, bias_init=None, proj_bias=False,
        image=dict(variant=image, image_size=image_size, channels=3, pool="cls",
                   posemb="learn", pre_norm=True, head=True),
        text=dict(variant=text, vocab_size=49_408, max_len=77, pool="last", causal=True,
                  head=True))
    c.loss = dict(name="softmax_chunked")
    _common(c, image_size=image_size, max_len=77, vocab=49_408, batch=batch, steps=steps,
            lr=5e-4, weight_decay=0.2)
    c.recipe = published
    return c


def siglip(*, image: str, text: str, embed_dim: int, image_size: int, max_len: int = 64,
           published: dict, batch: int, steps: int) -> ml_collections.ConfigDict:
    """SigLIP (Zhai et al. 2023) as big_vision trains it: a MAP-pooled image tower without a
    projection, a text tower attending over pads that pools the final position into a
    biased projection, t = 10 and b = -10 at init, the chunked sigmoid loss; 32k vocab."""
    c = ml_collections.ConfigDict()
    c.model = dict(
        embed_dim=embed_dim, temperature_init=10.0, bias_init=-10.0, dtype="bfloat16",
        image=dict(variant=image, image_size=image_size, channels=3, pool="map",
                   posemb="learn", head=False),
        text=dict(variant=text, vocab_size=32_000, max_len=max_len, pool="final", head=True))
    c.loss = dict(name="sigmoid_chunked")
    _common(c, image_size=image_size, max_len=max_len, vocab=32_000, batch=batch,
            steps=steps, lr=1e-3, weight_decay=1e-4)
    c.recipe = published
    return c


def lit(*, image: str, text: str, embed_dim: int, published: dict, batch: int,
        steps: int) -> ml_collections.ConfigDict:
    """LiT (Zhai et al. 2022), the released B16B_2 / L16L: a class-token ViT locked after
    `train.init_from`, a BERT-sized text tower (30,522 WordPiece ids, 16 tokens) pooling
    its first token, biased projections to embed_dim, softmax loss with t = 10 at init."""
    c = ml_collections.ConfigDict()
    c.model = dict(
        embed_dim=embed_dim, temperature_init=10.0, bias_init=None,
        image=dict(variant=image, image_size=224, channels=3, pool="cls", posemb="learn",
                   head=True),
        text=dict(variant=text, vocab_size=30_522, max_len=16, pool="first", head=True))
    c.loss = dict(name="softmax_chunked")
    _common(c, image_size=224, max_len=16, vocab=30_522, batch=batch, steps=steps, lr=1e-3,
            weight_decay=1e-4)
    c.train.locked = dict(image=True)
    c.recipe = published
    return c


def clippo(*, image: str, embed_dim: int, published: dict, batch: int,
           steps: int) -> ml_collections.ConfigDict:
    """CLIPPO (Tschannen et al. 2023): one MAP-pooled ViT with a projection head for
    images and captions rendered at 224 px, softmax loss with t = 10 at init."""
    c = ml_collections.ConfigDict()
    c.model = dict(
        name="one_tower", embed_dim=embed_dim, temperature_init=10.0, bias_init=None,
        image=dict(variant=image, image_size=224, channels=3, pool="map", posemb="learn",
                   head=True))
    c.loss = dict(name="softmax_chunked")
    _common(c, image_size=224, max_len=64, vocab=32_000, batch=batch, steps=steps, lr=1e-3,
            weight_decay=1e-4)
    c.data.render = dict(enabled=True, channels=3)
    c.recipe = published
    return c
