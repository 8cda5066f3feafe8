"""A small image-text corpus written to any root (local or gs://) as the two shard kinds a
pod run reads: TFRecord shards made by `data build` and webdataset tars.

Images are 28x28 JPEGs whose brightness pattern depends on the caption's class, so a tiny
model's loss moves; every byte is a function of the example's index (same corpus anywhere).
"""

from __future__ import annotations

import csv
import io
import os
import tarfile

import numpy as np
from PIL import Image

from contrastive_jax import paths
from contrastive_jax.data.build import build

CLASSES = ("circle", "stripes", "dots", "blank")


def image(i: int) -> bytes:
    rng = np.random.default_rng(i)
    k = i % len(CLASSES)
    pixels = rng.integers(0, 60, (28, 28)).astype(np.uint8)
    pixels[:, k * 7:(k + 1) * 7] += 180
    out = io.BytesIO()
    Image.fromarray(pixels, "L").convert("RGB").save(out, format="JPEG", quality=90)
    return out.getvalue()


def caption(i: int) -> str:
    return f"a photo of {CLASSES[i % len(CLASSES)]} number {i % 7}"


def write_corpus(root: str, staging: str, n: int = 64) -> dict[str, str]:
    """TFRecord shards under root/tfr (`data build` of a table in `staging`, a local
    folder) and two wds tars under root/wds; returns the two source patterns."""
    os.makedirs(staging, exist_ok=True)
    half = n // 2
    with open(os.path.join(staging, "table.csv"), "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["image", "caption", "uid"])
        for i in range(half):
            name = f"img{i:04d}.jpg"
            with open(os.path.join(staging, name), "wb") as g:
                g.write(image(i))
            writer.writerow([name, caption(i), f"t{i}"])
    build(os.path.join(staging, "table.csv"), paths.join(root, "tfr"), examples_per_shard=8,
          progress=False)
    for shard in range(2):
        tar_bytes = io.BytesIO()
        with tarfile.open(fileobj=tar_bytes, mode="w") as tar:
            for i in range(half + shard * half // 2, half + (shard + 1) * half // 2):
                # .cls: the class id, for zero-shot eval tasks on the same tars.
                for ext, data in (("jpg", image(i)), ("txt", caption(i).encode()),
                                  ("cls", str(i % len(CLASSES)).encode())):
                    info = tarfile.TarInfo(f"s{i:04d}.{ext}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
        paths.write_bytes(paths.join(root, "wds", f"shard-{shard}.tar"), tar_bytes.getvalue())
    return {"tfrecord": paths.join(root, "tfr", "data-*.tfrecord"),
            "wds": paths.join(root, "wds", "*.tar")}
