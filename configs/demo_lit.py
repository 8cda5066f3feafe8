"""Demo: LiT on Fashion-MNIST captions: a locked image tower from a demo_siglip run, a fresh
text tower tuned against it.

    contrastive-jax train --config configs/demo_siglip.py --workdir /tmp/demo_siglip
    contrastive-jax train --config configs/demo_lit.py:init=/tmp/demo_siglip --workdir /tmp/lit

`init` is the demo_siglip workdir (or an export of it, e.g. `init=hf:/tmp/siglip_hf`); its
image tower (MAP-pooled, no projection head) is copied and locked (no optimizer state, no
backward pass), while the text tower, t and b start fresh. With `cache=True` (default) the
locked tower embeds the 60,000 training images once and the steps run the text tower only.
"""

import importlib.util
import os

import ml_collections

from contrastive_jax.errors import ConfigError


def _demo_siglip_config(**kwargs) -> ml_collections.ConfigDict:
    # The same model as demo_siglip (the image tower must match it exactly).
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "demo_siglip.py")
    spec = importlib.util.spec_from_file_location("_demo_siglip", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(**kwargs)


def get_config(init: str = "", steps: int = 600, cache: bool = True,
               loss: str = "sigmoid_chunked") -> ml_collections.ConfigDict:
    if not init:
        raise ConfigError("configs/demo_lit.py needs init=DIR, a workdir trained with "
                          "configs/demo_siglip.py (e.g. configs/demo_lit.py:init=/tmp/demo_siglip)")
    c = _demo_siglip_config(steps=steps, loss=loss)
    c.optimizer.warmup_steps = min(50, steps // 10)  # only the text tower, t and b learn
    c.train.update(checkpoint_every=300, locked=dict(image=True),
                   init_from=dict(path=init, tower="image"), embedding_cache=dict(enabled=cache))
    return c
