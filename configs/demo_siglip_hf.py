"""Demo SigLIP in an architecture transformers' SiglipModel computes exactly (`export --format hf`).

    contrastive-jax train --config configs/demo_siglip_hf.py --workdir /tmp/demo_siglip_hf
    contrastive-jax export --checkpoint /tmp/demo_siglip_hf --format hf --out /tmp/siglip_hf

Differences from demo_siglip.py: the image tower pools with a MAP head and has no projection
(width = embed_dim); the text tower pools the final position without a pad mask (big_vision's
SigLIP text tower), so captions are always padded to max_len.
"""

import ml_collections


def get_config(steps: int = 1200) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.model = dict(
        embed_dim=96,
        temperature_init=10.0,
        bias_init=-10.0,
        image=dict(variant=None, width=96, depth=3, mlp_dim=384, num_heads=3, patch_size=7,
                   image_size=28, channels=1, pool="map", posemb="learn", head=False),
        text=dict(variant=None, width=64, depth=1, mlp_dim=256, num_heads=2, vocab_size=256,
                  max_len=16, pool="final", head=True),
    )
    c.data = dict(dataset="fashion_mnist_captions", max_len=16, tokenizer=dict(vocab_size=256))
    c.loss = dict(name="sigmoid_chunked")
    c.train = dict(batch_size=256, steps=steps, log_every=50, checkpoint_every=400)
    c.optimizer = dict(lr=2e-3, warmup_steps=min(100, steps // 10), weight_decay=1e-4)
    return c
