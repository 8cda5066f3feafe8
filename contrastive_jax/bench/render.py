"""Text-rendering throughput (CLIPPO): captions -> images in tf.data on one core."""

from __future__ import annotations

import time
from typing import Any

import ml_collections
import tensorflow as tf

from contrastive_jax.data.tokenizer_setup import text_renderer
from contrastive_jax.datasets.fashion_mnist_captions import caption_for


def bench_render(data_config: ml_collections.ConfigDict, *, batch_size: int = 256,
                 batches: int = 40) -> dict[str, Any]:
    """Examples/s of `data.render` in a tf.data map limited to one thread.

    The captions are the demo's synthetic ones (no dataset read), so only rendering is
    timed. tf.data's private thread pool and intra-op parallelism are both 1: the rate is
    per core, and a pipeline with `num_parallel_calls` scales it by the cores it gets.
    """
    renderer = text_renderer(data_config)
    captions = [caption_for("train", i, i % 10) for i in range(batch_size * 4)]
    options = tf.data.Options()
    options.threading.private_threadpool_size = 1
    options.threading.max_intra_op_parallelism = 1
    ds = (tf.data.Dataset.from_tensor_slices(captions).repeat().batch(batch_size)
          .map(renderer.tf_render).with_options(options))
    it = iter(ds)
    shape = tuple(next(it).shape)  # warm-up: traces the map function
    start, cpu_start = time.perf_counter(), time.process_time()
    for _ in range(batches):
        next(it)
    seconds = time.perf_counter() - start
    cpu_seconds = time.process_time() - cpu_start
    examples = batch_size * batches
    return {"benchmark": "render", "examples_per_sec_per_core": examples / seconds,
            # CPU time is what the rendering cost, even on a machine shared with other jobs
            # (where the wall-clock rate above drops): examples per second of one busy core.
            "examples_per_cpu_sec": examples / max(cpu_seconds, 1e-9),
            "batch_size": batch_size, "batches": batches, "seconds": seconds,
            "cpu_seconds": cpu_seconds,
            "output_shape": list(shape), "font_size": int(data_config.render.font_size),
            "mean_caption_chars": sum(map(len, captions)) / len(captions)}
