"""Demo: a small CLIP model (softmax loss) on Fashion-MNIST captions, trained on a CPU.

    contrastive-jax train --config configs/demo_clip.py --workdir /tmp/demo_clip
    contrastive-jax export --model /tmp/demo_clip --format hf --out /tmp/clip_hf
    contrastive-jax export --model /tmp/demo_clip --format open_clip --out /tmp/clip_oc

The architecture is one transformers' CLIPModel and open_clip's CLIP compute exactly: the
image tower pools a class token after a pre-encoder LayerNorm (CLIP's pre_layrnorm); the
text tower is causal and pools the EOS; both projections have no bias; there is no logit
bias (softmax loss).
"""

import ml_collections


def get_config(steps: int = 1200) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.model = dict(
        embed_dim=128,
        temperature_init=1 / 0.07,
        bias_init=None,
        proj_bias=False,
        image=dict(variant=None, width=96, depth=3, mlp_dim=384, num_heads=3, patch_size=7,
                   image_size=28, channels=1, pool="cls", posemb="learn", pre_norm=True),
        text=dict(variant=None, width=64, depth=1, mlp_dim=256, num_heads=2, vocab_size=256,
                  max_len=16, pool="last", causal=True),
    )
    c.data = dict(dataset="fashion_mnist_captions", max_len=16, tokenizer=dict(vocab_size=256))
    c.loss = dict(name="softmax_sharded")
    c.train = dict(batch_size=256, steps=steps, log_every=50, checkpoint_every=400)
    c.optimizer = dict(lr=2e-3, warmup_steps=min(100, steps // 10), weight_decay=1e-4)
    # Zero-shot on the test split, with prompt templates that never occur in training
    # captions; alignment and uniformity of 1,000 held-out pairs.
    test = dict(kind="tfds", name="fashion_mnist_captions", split="test")
    c.evals = dict(tasks=[
        dict(kind="zeroshot", name="fashion_mnist", data=test, prompts="fashion_mnist_heldout",
             batch_size=500),
        dict(kind="embedding_stats", name="fashion_mnist", data=test, num_examples=1000),
    ])
    return c
