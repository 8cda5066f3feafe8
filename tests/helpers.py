"""Shared test builders: tiny configs and synthetic batches."""

from __future__ import annotations

import itertools
import signal

import ml_collections
import numpy as np

from contrastive_jax.config import default_config, merge_into, use_model_schema

# The data, train and optimizer keys every tiny config shares.
_TINY_RUN = {
    "data": {"max_len": 8},
    "train": {"batch_size": 16, "steps": 10, "log_every": 1, "progress_bar": False},
    "optimizer": {"lr": 1e-3, "warmup_steps": 2},
}


def _with_sections(config: ml_collections.ConfigDict, sections) -> ml_collections.ConfigDict:
    for name, values in sections.items():
        merge_into(config[name], values, prefix=f"{name}.")
    return config


FASHION_TEST = {"kind": "tfds", "name": "fashion_mnist_captions", "split": "test"}


def fashion_tasks(batch_size: int = 16, stats: int = 32, *, fewshot: dict | None = None,
                  retrieval: int = 0) -> list[dict]:
    """The demos' eval tasks at test size: zero-shot on the test split with held-out
    prompts; embedding statistics of `stats` pairs (0: none); a few-shot task with the
    options `fewshot`; held-out-pair retrieval of `retrieval` pairs (0: none)."""
    tasks = [{"kind": "zeroshot", "name": "fashion_mnist", "data": FASHION_TEST,
              "prompts": "fashion_mnist_heldout", "batch_size": batch_size}]
    if stats:
        tasks.append({"kind": "embedding_stats", "name": "fashion_mnist", "data": FASHION_TEST,
                      "num_examples": stats})
    if fewshot is not None:
        tasks.append({"kind": "fewshot", "name": "fashion_mnist", "data": FASHION_TEST,
                      **fewshot})
    if retrieval:
        tasks.append({"kind": "retrieval", "name": "fashion_mnist", "data": FASHION_TEST,
                      "captions_key": "", "num_examples": retrieval})
    return tasks


def tiny_config(**sections) -> ml_collections.ConfigDict:
    """A model small enough to compile and step in seconds on a CPU."""
    config = default_config()
    merge_into(config, {
        "model": {
            "embed_dim": 16,
            "image": {"variant": None, "width": 32, "depth": 1, "mlp_dim": 64, "num_heads": 2,
                      "patch_size": 7, "image_size": 28, "channels": 1, "pool": "gap"},
            "text": {"variant": None, "width": 32, "depth": 1, "mlp_dim": 64, "num_heads": 2,
                     "vocab_size": 64, "max_len": 8},
        },
        **_TINY_RUN,
    })
    return _with_sections(config, sections)


def synthetic_batches(num: int, batch_size: int, seed: int = 0, vocab: int = 64,
                      max_len: int = 8) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    batches = []
    for _ in range(num):
        lengths = rng.integers(2, max_len + 1, size=batch_size)
        text = rng.integers(3, vocab, size=(batch_size, max_len)).astype(np.int32)
        text[np.arange(max_len)[None, :] >= lengths[:, None]] = 0  # right padding
        batches.append({
            "image": rng.uniform(-1, 1, size=(batch_size, 28, 28, 1)).astype(np.float32),
            "text": text,
            "label": rng.integers(0, 4, size=batch_size).astype(np.int32),
        })
    return batches


def sigterm_in_step(to_global, step: int):
    """A stand-in for the loop's `to_global` that sends SIGTERM while it feeds batch `step`
    (1-based): the loop finishes that step, saves and stops, as a preempted run does."""
    calls = itertools.count(1)

    def preempted(batch, mesh):
        if next(calls) == step:
            signal.raise_signal(signal.SIGTERM)
        return to_global(batch, mesh)

    return preempted


def train_cut_and_resumed(config, workdir: str, monkeypatch, step: int) -> dict:
    """Trains `config` in `workdir`, preempted by SIGTERM in `step` (checked: it saves and
    stops there), then relaunched: the relaunch's result."""
    from contrastive_jax.train import loop

    to_global = loop.to_global
    monkeypatch.setattr(loop, "to_global", sigterm_in_step(to_global, step))
    assert loop.train(config, workdir) == {"step": step, "interrupted_by": signal.SIGTERM}
    monkeypatch.setattr(loop, "to_global", to_global)
    return loop.train(config, workdir)


def tiny_cappa_config(**sections) -> ml_collections.ConfigDict:
    """A CapPa (captioner) as small as `tiny_config`'s towers, for 28x28 grey images."""
    config = default_config()
    use_model_schema(config, "cappa")
    size = {"variant": None, "width": 32, "depth": 1, "mlp_dim": 64, "num_heads": 2}
    merge_into(config, {
        "model": {"image": {**size, "patch_size": 7, "image_size": 28, "channels": 1},
                  "decoder": {**size, "vocab_size": 64, "max_len": 8}},
        **_TINY_RUN,
    })
    return _with_sections(config, sections)


def tiny_catlip_config(num_synsets: int = 12, **sections) -> ml_collections.ConfigDict:
    """A CatLIP (image tower + synset head) with `tiny_config`'s image tower."""
    config = default_config()
    use_model_schema(config, "catlip")
    size = {"variant": None, "width": 32, "depth": 1, "mlp_dim": 64, "num_heads": 2}
    merge_into(config, {
        "model": {"image": {**size, "patch_size": 7, "image_size": 28, "channels": 1},
                  "head": {"num_synsets": num_synsets}},
        **_TINY_RUN,
        "data": {"max_len": 8, "synsets": {"enabled": True}},
    })
    return _with_sections(config, sections)


def tiny_siglip2_config(**sections) -> ml_collections.ConfigDict:
    """`tiny_config`'s towers as a SigLIP 2 model: a one-layer LocCa decoder, 2 local views
    of 14 px, a 32-prototype head, the self-supervised terms from step 4 of 10."""
    config = default_config()
    use_model_schema(config, "siglip2")
    size = {"variant": None, "width": 32, "depth": 1, "mlp_dim": 64, "num_heads": 2}
    merge_into(config, {
        "model": {
            "embed_dim": 16,
            "image": {**size, "patch_size": 7, "image_size": 28, "channels": 1, "pool": "gap"},
            "text": {**size, "vocab_size": 64, "max_len": 8},
            "locca": {**size, "max_len": 8},
            "self_distill": {"local_views": 2, "local_scale": (0.3, 0.6), "local_size": 14},
            "teacher": {"head_dim": 32, "head_hidden": 32, "start_fraction": 0.4,
                        "ema": 0.9},
        },
        **_TINY_RUN,
    })
    return _with_sections(config, sections)
