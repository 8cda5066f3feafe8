"""Demo: CatLIP (the image tower classifying its caption's WordNet synsets) on Fashion-MNIST
captions, on a CPU.

    contrastive-jax data synsets --config configs/demo_catlip.py --out /tmp/synsets.json
    contrastive-jax train --config configs/demo_catlip.py --workdir /tmp/demo_catlip
    contrastive-jax train --config configs/demo_catlip.py:steps=50 --workdir /tmp/smoke

The image tower is demo_siglip's (GAP-pooled here, for the head and the few-shot probe).
On a fresh start the run tags the training captions' nouns (spaCy), maps them to WordNet
synsets and keeps those named by >= 500 captions (the paper's threshold) in
`workdir/synsets.json`; `data synsets` writes the same file ahead of time, and
`--config.data.synsets.path=FILE` uses it. `hash` pins the vocabulary this recipe was
measured with: another corpus, tagger or threshold gives another hash and is refused.
Zero-shot classification reads the head's rows of each class name's synsets; there is no
text tower, hence no embedding statistics.
"""

import ml_collections

# The demo corpus's vocabulary (fashion_mnist_captions train, min_count 500).
SYNSETS, SYNSETS_HASH = 39, "be3e1ecde52c8e11"


def get_config(steps: int = 1200) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.model = dict(
        name="catlip",
        image=dict(variant=None, width=96, depth=3, mlp_dim=384, num_heads=3, patch_size=7,
                   image_size=28, channels=1, pool="gap", posemb="learn"),
        head=dict(num_synsets=SYNSETS),
    )
    # max_len: synset slots per caption (the demo's captions name at most a few).
    c.data = dict(dataset="fashion_mnist_captions", max_len=8,
                  synsets=dict(enabled=True, hash=SYNSETS_HASH, min_count=500))
    c.train = dict(batch_size=256, steps=steps, log_every=50, checkpoint_every=400)
    c.optimizer = dict(lr=2e-3, warmup_steps=min(100, steps // 10), weight_decay=1e-4)
    # Zero-shot on the test split, with prompt templates that never occur in training
    # captions; 1/5/10/25-shot linear probes.
    test = dict(kind="tfds", name="fashion_mnist_captions", split="test")
    c.evals = dict(tasks=[
        dict(kind="zeroshot", name="fashion_mnist", data=test, prompts="fashion_mnist_heldout",
             batch_size=500),
        dict(kind="fewshot", name="fashion_mnist", data=test, batch_size=500),
    ])
    return c
