"""Demo: CapPa (a captioner, no contrastive loss) on Fashion-MNIST captions, on a CPU.

    contrastive-jax train --config configs/demo_cappa.py --workdir /tmp/demo_cappa
    contrastive-jax train --config configs/demo_cappa.py:steps=50 --workdir /tmp/smoke

The image tower is demo_siglip's (GAP-pooled for the few-shot probe); a 2-layer decoder
cross-attends to its 16 patch tokens and learns to write the caption, three quarters of the
examples by parallel prediction (all-MASK input, every token at once; Tschannen et al.
2023). Zero-shot classification scores each class's held-out prompts by their
log-likelihood given the image (the log of the templates' mean likelihood: see
docs/captioning.md); there is no text embedding, hence no embedding statistics.
"""

import ml_collections


def get_config(steps: int = 1200, parallel_fraction: float = 0.75) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.model = dict(
        name="cappa",
        image=dict(variant=None, width=96, depth=3, mlp_dim=384, num_heads=3, patch_size=7,
                   image_size=28, channels=1, pool="gap", posemb="learn"),
        decoder=dict(variant=None, width=96, depth=2, mlp_dim=384, num_heads=3,
                     vocab_size=256, max_len=32, parallel_fraction=parallel_fraction),
    )
    c.data = dict(dataset="fashion_mnist_captions", max_len=32, tokenizer=dict(vocab_size=256))
    c.train = dict(batch_size=256, steps=steps, log_every=50, checkpoint_every=400)
    c.optimizer = dict(lr=2e-3, warmup_steps=min(100, steps // 10), weight_decay=1e-4)
    # Zero-shot on the test split, with prompt templates that never occur in training
    # captions (80 prompts per image are scored: small batches keep the logits small);
    # 1/5/10/25-shot linear probes.
    test = dict(kind="tfds", name="fashion_mnist_captions", split="test")
    c.evals = dict(tasks=[
        dict(kind="zeroshot", name="fashion_mnist", data=test, prompts="fashion_mnist_heldout",
             batch_size=100),
        dict(kind="fewshot", name="fashion_mnist", data=test, batch_size=500),
    ])
    return c
