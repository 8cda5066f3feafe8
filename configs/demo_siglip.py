"""Demo: a small SigLIP model on Fashion-MNIST captions, trained on a CPU in minutes.

    contrastive-jax train --config configs/demo_siglip.py --workdir /tmp/demo_siglip
    contrastive-jax train --config configs/demo_siglip.py:steps=50 --workdir /tmp/smoke
    contrastive-jax export --model /tmp/demo_siglip --format hf --out /tmp/siglip_hf

The architecture is one transformers' SiglipModel computes exactly (big_vision's SigLIP):
the image tower pools with a MAP head and has no projection (width = embed_dim); the text
tower is bidirectional and pools the final position without a pad mask, so captions are
always padded to max_len (64). The zero-shot eval at the end uses prompt templates that never
occur in training captions.
"""

import ml_collections


def get_config(steps: int = 1200, loss: str = "sigmoid_chunked") -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    sigmoid = loss.startswith("sigmoid")
    c.model = dict(
        embed_dim=96,
        temperature_init=10.0 if sigmoid else 1 / 0.07,
        bias_init=-10.0 if sigmoid else None,
        # 28x28 images in 7x7 patches: 16 tokens. Captions are short and few-worded, so
        # one text layer suffices; most compute goes to the image tower.
        image=dict(variant=None, width=96, depth=3, mlp_dim=384, num_heads=3, patch_size=7,
                   image_size=28, channels=1, pool="map", posemb="learn", head=False),
        # 64 tokens, big_vision's SigLIP length: transformers' zero-shot pipeline pads
        # SigLIP text to 64, and this tower pools the final position.
        text=dict(variant=None, width=64, depth=1, mlp_dim=256, num_heads=2, vocab_size=256,
                  max_len=64, pool="final", head=True),
    )
    c.data = dict(dataset="fashion_mnist_captions", max_len=64, tokenizer=dict(vocab_size=256))
    c.loss = dict(name=loss)
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
