"""SigLIP ViT-B/16 at 224 px in bfloat16 (f32 master weights): the accelerator benchmark model.

    contrastive-jax bench step --config configs/recipes/siglip_b16.py      # MFU vs bf16 peak
    contrastive-jax bench step --config configs/recipes/siglip_b16.py:batch=1024 \\
        --config.model.remat=full
    contrastive-jax train --config configs/recipes/siglip_b16.py --workdir gs://BUCKET/run \\
        --config.data.sources="[{'kind': 'tfrecord', 'pattern': 'gs://BUCKET/shards/*.tfrecord'}]" \
        --config.data.tokenizer.path=PATH/TO/spm_32k.model

The towers follow big_vision's SigLIP B/16 (arXiv:2303.15343): a MAP-pooled B/16 image
tower without a projection, a B text tower over 64 tokens that pools the final position
into a projection head, embed_dim 768, t = 10 and b = -10 at init, chunked sigmoid loss.
Training needs an image-text corpus (`data.sources`); the Fashion-MNIST default is only
there so the config loads.

Published: 203.16 M params, 46.44 GFLOPs per example (35.42 image + 11.02 text), from
open_clip's docs/model_profile.csv (mlfoundations/open_clip at 89fb801, ViT-B-16-SigLIP),
counted with torch's FlopCounterMode (2 FLOPs per multiply-add).

Trained on: 16 TPU v4 chips at global batch 32,768 (the model card of
google/siglip-base-patch16-224; the paper's batch). Plan it there (docs/plan.md):

    contrastive-jax plan --config configs/recipes/siglip_b16.py --topology v4-32 \
        --config.train.batch_size=32768
"""

import ml_collections

from contrastive_jax.config.recipes import published, siglip


def get_config(batch: int = 256, steps: int = 10_000) -> ml_collections.ConfigDict:
    return siglip(image="B/16", text="B", embed_dim=768, image_size=224,
                  published=published(203.16e6, 46.44, 35.42, 11.02,
                                      hardware="16 TPU v4 chips", topology="v4-32",
                                      batch=32_768), batch=batch, steps=steps)
