"""Demo: SigLIP 2's recipe on demo_siglip's model, Fashion-MNIST captions, on a CPU.

    contrastive-jax train --config configs/demo_siglip2.py --workdir /tmp/demo_siglip2
    contrastive-jax train --config configs/demo_siglip2.py:off=locca --workdir /tmp/no_locca

The towers are demo_siglip's, so the export is the same SiglipModel. On top of the sigmoid
loss: a one-layer, 64-wide LocCa decoder captions every image from the image tower's 16 tokens (half
the examples by parallel prediction), and for the last 20% of the steps an EMA teacher
drives local-to-global self-distillation (4 local crops of 14 px per image) and masked prediction
(half the patches replaced by a mask token). `off=` switches terms off (locca,
self_distill, masked_prediction, joined by +), for the ablation in docs/captioning.md.
"""

import os

import ml_collections

from contrastive_jax.config import ConfigError, load_config_file

TERMS = ("locca", "self_distill", "masked_prediction")


def get_config(steps: int = 1200, off: str = "") -> ml_collections.ConfigDict:
    here = os.path.dirname(os.path.abspath(__file__))
    c = load_config_file(f"{os.path.join(here, 'demo_siglip.py')}:steps={steps}")
    model = dict(c.model)
    model.update(
        name="siglip2",
        # 32 positions: the longest training caption is 29 tokens (the text tower's 64 are
        # padding beyond); longer ones would be cut keeping their EOS.
        locca=dict(variant=None, width=64, depth=1, mlp_dim=256, num_heads=2, max_len=32,
                   parallel_fraction=0.5),
        # DINO's small local crops: 14 px (2 x 2 patches), so 4 views cost one image. Half
        # the image or more, at weight 0.5: smaller crops of these garments, at weight 1,
        # cost zero-shot accuracy (docs/captioning.md).
        self_distill=dict(local_views=4, local_scale=(0.5, 1.0), local_size=14, weight=0.5),
        # 256 prototypes: on 4,096 patch tokens a step, a wider head would cost more than
        # the towers.
        teacher=dict(head_dim=256, head_hidden=256, ema=0.996),
    )
    for term in filter(None, off.split("+")):
        if term not in TERMS:
            raise ConfigError(f"configs/demo_siglip2.py: off={term!r} is not one of {TERMS}")
        model[term] = dict(model.get(term, {}), enabled=False)
    c.model = model
    return c
