"""`bench data`: input-pipeline examples/s per core against the train step's examples/s.

Writes synthetic 224 px JPEGs (smooth random scenes plus noise, JPEG quality 90: about the
size of web images stored at that resolution) with random captions into TFRecord shards,
then times the `data.sources` pipeline (read, decode, inception crop, flip, resize, caption
cleanup, sentencepiece tokenisation, batching) with tf.data limited to `threads` threads,
and the train step of the same config on synthetic batches (bench/train_step.py).
"""

from __future__ import annotations

import io
import os
import tarfile
import tempfile
import time
from typing import Any

import ml_collections
import numpy as np
import tensorflow as tf

from contrastive_jax import paths
from contrastive_jax.data import records
from contrastive_jax.data.stream import train_dataset
from contrastive_jax.data.tokenizer import Tokenizer, train_tokenizer

_WORDS = ("a photo of the small large red blue green dog cat car tree house person street "
          "beach mountain city at night in winter with two some old new bright dark").split()


def write_synthetic_shards(out_dir: str, num_examples: int, image_size: int = 224,
                           num_shards: int = 8, seed: int = 0) -> list[str]:
    """TFRecord and webdataset tar shards of the same realistic-size JPEGs and random
    captions (`bench-*.tfrecord`, `bench-*.tar`); returns the captions."""
    rng = np.random.default_rng(seed)
    captions = []
    names = [os.path.join(out_dir, f"bench-{i:05d}-of-{num_shards:05d}")
             for i in range(num_shards)]  # fmt: skip
    writers = [tf.io.TFRecordWriter(f"{name}.tfrecord") for name in names]
    tars = [tarfile.open(f"{name}.tar", "w") for name in names]
    for i in range(num_examples):
        coarse = rng.uniform(0, 255, (1, 8, 8, 3)).astype(np.float32)
        image = tf.image.resize(coarse, (image_size, image_size), method="bicubic")[0]
        image += rng.normal(0, 6, image.shape).astype(np.float32)
        data = tf.io.encode_jpeg(tf.cast(tf.clip_by_value(image, 0, 255), tf.uint8),
                                 quality=90).numpy()  # fmt: skip
        caption = " ".join(rng.choice(_WORDS, rng.integers(5, 16)))
        captions.append(caption)
        writers[i % num_shards].write(records.serialize_example(data, caption, str(i), -1))
        for ext, payload in (("jpg", data), ("txt", caption.encode())):
            info = tarfile.TarInfo(f"{i:08d}.{ext}")
            info.size = len(payload)
            tars[i % num_shards].addfile(info, io.BytesIO(payload))
    for w in writers + tars:
        w.close()
    return captions


def bench_config(config: ml_collections.ConfigDict, image_size: int,
                 patch_size: int = 16) -> ml_collections.ConfigDict:
    """The config with RGB images of `image_size` in `patch_size` patches, crop + flip on."""
    config = config.copy_and_resolve_references()
    config.model.image.image_size = image_size
    config.model.image.channels = 3
    config.model.image.patch_size = patch_size
    config.data.image_size, config.data.channels = image_size, 3
    config.data.flip = True
    config.data.augment.inception_crop = True
    return config


def bench_pipeline(data_config: ml_collections.ConfigDict, tokenizer: Tokenizer, pattern: str,
                   *, kind: str, batch_size: int, threads: int, batches: int) -> dict[str, Any]:
    """Examples/s of the sources pipeline with tf.data on `threads` threads."""
    cfg = data_config.copy_and_resolve_references()
    cfg.sources = ({"kind": kind, "pattern": pattern},)
    ds = train_dataset(cfg, tokenizer, global_batch_size=batch_size)
    options = tf.data.Options()
    options.threading.private_threadpool_size = threads
    options.threading.max_intra_op_parallelism = 1
    it = ds.with_options(options).as_numpy_iterator()
    for _ in range(2):  # warm-up: graph building, first files opened, buffers filled
        next(it)
    start = time.perf_counter()
    for _ in range(batches):
        next(it)
    seconds = time.perf_counter() - start
    rate = batches * batch_size / seconds
    return {"bench": "data_pipeline", "source": kind, "threads": threads,
            "image_size": cfg.image_size, "batch": batch_size, "examples_per_sec": round(rate, 1),
            "examples_per_sec_per_core": round(rate / threads, 1),
            "ops": "read+decode+inception_crop+flip+resize+clean+tokenize"}  # fmt: skip


def bench_data(config: ml_collections.ConfigDict, *, image_size: int = 224, patch_size: int = 16,
               num_examples: int = 2048, threads: tuple[int, ...] = (1,), batches: int = 8,
               step_steps: int = 5, with_step: bool = True,
               kinds: tuple[str, ...] = ("tfrecord",),
               directory: str | None = None) -> list[dict[str, Any]]:
    """Pipeline rows (per source kind and thread count), the train-step row and the ratio
    of the first pipeline row to the step. `directory`: where the shards are read from
    (e.g. a gs:// folder; they are uploaded there), default the local temporary folder."""
    from contrastive_jax.bench.train_step import bench_train_step

    config = bench_config(config, image_size, patch_size)
    batch = config.train.batch_size
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        captions = write_synthetic_shards(tmp, num_examples, image_size)
        sizes = [os.path.getsize(os.path.join(tmp, f)) for f in os.listdir(tmp)
                 if f.endswith(".tfrecord")]  # fmt: skip
        tokenizer = Tokenizer(train_tokenizer(captions, os.path.join(tmp, "spm"),
                                              config.data.tokenizer.vocab_size))  # fmt: skip
        where = tmp
        if directory is not None:
            for name in sorted(os.listdir(tmp)):
                if name.startswith("bench-"):
                    paths.copy(os.path.join(tmp, name), paths.join(directory, name))
            where = directory
        for kind in kinds:
            suffix = "tar" if kind == "webdataset" else "tfrecord"
            pattern = paths.join(where, f"bench-*.{suffix}")
            for n in threads:
                row = bench_pipeline(config.data, tokenizer, pattern, kind=kind,
                                     batch_size=batch, threads=n, batches=batches)  # fmt: skip
                row["mean_jpeg_kb"] = round(sum(sizes) / num_examples / 1024, 1)
                row["shards_in"] = where if directory is not None else "local temp"
                rows.append(row)
    if with_step:
        step = bench_train_step(config, steps=step_steps)
        rows.append(step)
        per_core = rows[0]["examples_per_sec_per_core"]
        best = max(r["examples_per_sec"] for r in rows if r["bench"] == "data_pipeline")
        rows.append({"bench": "data_vs_step", "pipeline_per_core_over_step":
                     round(per_core / step["examples_per_sec"], 2),
                     "pipeline_best_over_step": round(best / step["examples_per_sec"], 2),
                     "cores_to_feed_step": round(step["examples_per_sec"] / per_core, 3)})
    return rows
