"""The standard benchmark suite: CLIP's zero-shot classification datasets, plus COCO and
Flickr30k image-text retrieval by the COCO protocol (Karpathy test splits, every caption).

    contrastive-jax eval --model SPEC --config configs/suite_standard.py
    contrastive-jax eval --model SPEC \\
        --config configs/suite_standard.py:gtsrb=/data/wds_gtsrb/test/*.tar,batch_size=128

Each zero-shot task scores the class names and templates shipped in
contrastive_jax/evaluate/class_lists/<name>.json (the source of each list is named there).
Data are TFDS datasets (built in `data.data_dir`, or TFDS's default directory;
imagenet2012 needs its manual download). TFDS's catalogue lacks three of them:
- GTSRB and Country211 read webdataset shards with an integer `.cls` per sample, in the
  label order of the shipped lists (as clip_benchmark's wds_gtsrb / wds_country211 test
  shards); pass their glob patterns as `gtsrb=` and `country211=`.
- Flickr30k retrieval reads a TFDS dataset you prepared in `data.data_dir` (features
  `image` and `captions/text`, split "test": Karpathy's 1k test images); pass its name as
  `flickr30k=`.
Until they are given, the placeholder defaults below fail those tasks in one line.
"""

import ml_collections

from contrastive_jax.config import default_config

# Placeholders the user replaces (config arguments); not real paths.
GTSRB_SHARDS = "/path/to/wds_gtsrb/test/*.tar"
COUNTRY211_SHARDS = "/path/to/wds_country211/test/*.tar"
FLICKR30K_TFDS = "flickr30k"  # not in TFDS's catalogue: a builder you prepare

# (task and class-list name, TFDS dataset, split). TFDS eurosat has only a train split; its
# last 20% is VTAB's test split (train 60% / validation 20% / test 20%).
_TFDS_ZEROSHOT = (
    ("imagenet1k", "imagenet2012", "validation"),
    ("cifar10", "cifar10", "test"),
    ("cifar100", "cifar100", "test"),
    ("food101", "food101", "validation"),  # Food-101's test images
    ("oxford_iiit_pet", "oxford_iiit_pet", "test"),
    ("flowers102", "oxford_flowers102", "test"),
    ("stl10", "stl10", "test"),
    ("sun397", "sun397/tfds", "test"),
    ("dtd", "dtd", "test"),
    ("eurosat", "eurosat/rgb", "train[80%:]"),
    ("mnist", "mnist", "test"),
    ("fashion_mnist", "fashion_mnist", "test"),
)


def _zeroshot(name: str, data: dict, batch_size: int) -> dict:
    return dict(kind="zeroshot", name=name, data=data, classes=name, prompts=name, every=0,
                batch_size=batch_size)


def get_config(gtsrb: str = GTSRB_SHARDS, country211: str = COUNTRY211_SHARDS,
               flickr30k: str = FLICKR30K_TFDS,
               batch_size: int = 256) -> ml_collections.ConfigDict:
    c = default_config()
    tasks = [_zeroshot(name, dict(kind="tfds", name=ds, split=split), batch_size)
             for name, ds, split in _TFDS_ZEROSHOT]
    tasks += [
        # Not in TFDS: webdataset shards with a `.cls` label.
        _zeroshot("gtsrb", dict(kind="webdataset", pattern=gtsrb, label="cls"), batch_size),
        _zeroshot("country211", dict(kind="webdataset", pattern=country211, label="cls"),
                  batch_size),
        # COCO protocol: Karpathy & Li's 5k test images, each with all its captions.
        dict(kind="retrieval", name="coco", data=dict(kind="tfds", name="coco_captions",
                                                      split="test"),
             captions_key="captions/text", num_examples=0, chunk=1024, batch_size=batch_size),
        dict(kind="retrieval", name="flickr30k", data=dict(kind="tfds", name=flickr30k,
                                                           split="test"),
             captions_key="captions/text", num_examples=0, chunk=1024, batch_size=batch_size),
    ]
    c.evals.tasks = tasks
    return c
