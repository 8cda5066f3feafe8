"""Demo: NaFlex SigLIP on Fashion-MNIST items at variable aspect ratio, against squashing.

    contrastive-jax train --config configs/demo_naflex.py --workdir /tmp/demo_naflex
    contrastive-jax train --config configs/demo_naflex.py:squash=True --workdir /tmp/demo_squash
    contrastive-jax eval --model /tmp/demo_naflex --max-num-patches 16 32 48

The data (datasets/fashion_mnist_aspect.py) puts each 28x28 item, unresized, on a canvas of
aspect 1:3 to 3:1 (short side 28, long side up to 84). configs/demo_siglip.py's model (7x7
patches, a 4x4 position table) trains on it two ways, for the same steps:
- NaFlex (default): each image at its own aspect ratio, patchified to a budget of 48
  patches, at which every canvas is at native scale or above (4 x 12 patches for the
  longest).
- squash=True: every canvas resized to 28x28 (16 patches), as every image of a fixed-size
  tower is: an item on a 1:3 canvas is narrowed 3x.
Both are evaluated zero-shot on the 10,000 test canvases with held-out prompts; the NaFlex
model at 16, 32 and 48 patches (a metric each: zeroshot/fashion_mnist_aspect@48/top1, ...).
Measured on 2026-12-06 (docs/benchmarks.md, "demo_naflex"): 0.698 at 48 patches against
0.657 squashed. Mixing budgets (16, 32, 48) in training did worse at 600 steps (0.631 at
32): `--config.data.naflex.budgets=[16,32,48]`.
"""

import ml_collections

TRAIN_BUDGETS = (48,)
EVAL_BUDGETS = (16, 32, 48)


def get_config(steps: int = 600, squash: bool = False) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.model = dict(
        embed_dim=96, temperature_init=10.0, bias_init=-10.0,
        image=dict(variant=None, width=96, depth=3, mlp_dim=384, num_heads=3, patch_size=7,
                   image_size=28, channels=1, pool="map", posemb="learn", head=False,
                   naflex=not squash),
        text=dict(variant=None, width=64, depth=1, mlp_dim=256, num_heads=2, vocab_size=256,
                  max_len=64, pool="final", head=True),
    )
    c.data = dict(dataset="fashion_mnist_aspect", max_len=64, tokenizer=dict(vocab_size=256))
    if not squash:
        c.data.naflex = dict(budgets=TRAIN_BUDGETS)
    c.loss = dict(name="sigmoid_chunked")
    c.train = dict(batch_size=256, steps=steps, log_every=50, checkpoint_every=400)
    c.optimizer = dict(lr=2e-3, warmup_steps=min(100, steps // 10), weight_decay=1e-4)
    test = dict(kind="tfds", name="fashion_mnist_aspect", split="test")
    zeroshot = dict(kind="zeroshot", name="fashion_mnist_aspect", data=test,
                    prompts="fashion_mnist_heldout", batch_size=500)
    if not squash:
        zeroshot["max_num_patches"] = list(EVAL_BUDGETS)
    c.evals = dict(tasks=[zeroshot])
    return c
