"""SigLIP ViT-B/16 at 224 px in bfloat16 (f32 master weights): the accelerator benchmark model.

    contrastive-jax bench step --config configs/siglip_b16.py            # MFU vs bf16 peak
    contrastive-jax bench step --config configs/siglip_b16.py:batch=1024 --config.model.remat=full
    contrastive-jax train --config configs/siglip_b16.py --workdir gs://BUCKET/run \\
        --config.data.sources="[{'kind': 'tfrecord', 'pattern': 'gs://BUCKET/shards/*.tfrecord'}]" \
        --config.data.tokenizer.path=PATH/TO/spm_32k.model

The towers follow big_vision's SigLIP B/16 (arXiv:2303.15343): a MAP-pooled B/16 image
tower without a projection, a B text tower over 64 tokens that pools the final position
into a projection head, embed_dim 768, t = 10 and b = -10 at init, chunked sigmoid loss.
Training needs an image-text corpus (`data.sources`); the Fashion-MNIST default is only
there so the config loads.
"""

import ml_collections


def get_config(batch: int = 256, steps: int = 10_000) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.model = dict(
        embed_dim=768,
        temperature_init=10.0,
        bias_init=-10.0,
        dtype="bfloat16",
        image=dict(variant="B/16", image_size=224, channels=3, pool="map", posemb="learn",
                   head=False),
        text=dict(variant="B", vocab_size=32_000, max_len=64, pool="final", head=True),
    )
    c.data = dict(max_len=64, image_size=224, channels=3, tokenizer=dict(vocab_size=32_000))
    c.loss = dict(name="sigmoid_chunked")
    c.train = dict(batch_size=batch, steps=steps, log_every=100, checkpoint_every=1000)
    c.optimizer = dict(lr=1e-3, warmup_steps=min(2000, steps // 10), weight_decay=1e-4)
    return c
