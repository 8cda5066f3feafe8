"""Demo: the same small model as demo_siglip.py, trained with CLIP's softmax loss.

    contrastive-jax train --config configs/demo_clip.py --workdir /tmp/demo_clip
"""

import importlib.util
import os

import ml_collections

_spec = importlib.util.spec_from_file_location(
    "demo_siglip", os.path.join(os.path.dirname(__file__), "demo_siglip.py"))
_siglip = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_siglip)


def get_config(steps: int = 1200, loss: str = "softmax_sharded") -> ml_collections.ConfigDict:
    return _siglip.get_config(steps=steps, loss=loss)
