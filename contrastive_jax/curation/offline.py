"""Offline passes over a split: `data score` (image-caption cosine per uid under a
checkpoint), `data dedup` (keep-lists from exact or semantic deduplication) and `data cat
--config` (a keep-list of the pairs DiHT's CAT filter keeps)."""

from __future__ import annotations

import collections
from collections.abc import Sequence

import numpy as np

from contrastive_jax.checkpoints.store import restore_weights
from contrastive_jax.config import load_config
from contrastive_jax.config.workdir import load_workdir_config
from contrastive_jax.curation.corpus import split_batches
from contrastive_jax.curation.dedup import exact_keep, semdedup_keep
from contrastive_jax.data.filters.cat import REASONS, CatFilter
from contrastive_jax.data.filters.uid_tables import write_keep_list, write_scores
from contrastive_jax.data.tokenizer_setup import workdir_tokenizer
from contrastive_jax.errors import ConfigError, DataError
from contrastive_jax.evaluate.embed import encode_images, encode_texts
from contrastive_jax.models.state import ModelDef


def embed_split(workdir: str, split: str | None, batch_size: int, step: int | None = None,
                overrides: Sequence[str] = ()) -> dict[str, np.ndarray]:
    """{"uids", "image" [N,D], "text" [N,D]}: unit embeddings of a split with a workdir's
    checkpoint; the data is the workdir's `data` config (after `overrides`)."""
    config, mesh, state = restore_weights(workdir, step, overrides=overrides)
    tokenizer = workdir_tokenizer(config, workdir)
    model_def = ModelDef(config.model)
    uids, zimg, ztxt = [], [], []
    split = split or config.data.train_split
    for batch in split_batches(config.data, split, batch_size, tokenizer):
        uids.extend(u.decode("utf-8") for u in batch["uid"])
        zimg.append(encode_images(model_def, state, batch["image"], mesh))
        ztxt.append(encode_texts(model_def, state, batch["text"], mesh))
    if not uids:
        raise DataError(f"{config.data.dataset} {split}: no examples")
    return {"uids": np.asarray(uids), "image": np.concatenate(zimg),
            "text": np.concatenate(ztxt)}


def score_split(workdir: str, out: str, split: str | None = None, batch_size: int = 512,
                step: int | None = None, overrides: Sequence[str] = ()) -> dict[str, float]:
    """Writes uid -> cosine(image, caption) to `out` (.npz) and returns a summary."""
    emb = embed_split(workdir, split, batch_size, step, overrides)
    scores = np.sum(emb["image"] * emb["text"], axis=-1)
    write_scores(out, emb["uids"], scores)
    return {"scores": out, "count": len(scores), "mean": float(scores.mean()),
            "min": float(scores.min()), "max": float(scores.max())}


def dedup_split(mode: str, out: str, *, workdir: str | None = None, config: str | None = None,
                split: str | None = None, eps: float = 0.05, clusters: int = 10,
                batch_size: int = 512, step: int | None = None,
                overrides: Sequence[str] = ()) -> dict[str, object]:
    """Writes the uids to keep (one per line) to `out` and returns a summary.

    exact: identical decoded pixels; the data comes from `workdir`'s or `config`'s `data`.
    semantic: SemDeDup on the image embeddings of `workdir`'s checkpoint.
    """
    if mode == "exact":
        if (workdir is None) == (config is None):
            raise ConfigError("data dedup --mode exact needs exactly one of --workdir, --config")
        cfg = (load_workdir_config(workdir, overrides) if workdir
               else load_config(config, overrides)).data
        split = split or cfg.train_split
        uids, pixels = [], []
        for batch in split_batches(cfg, split, batch_size):
            uids.extend(u.decode("utf-8") for u in batch["uid"])
            pixels.extend(batch["pixels"])
        keep = exact_keep(uids, pixels)
    elif mode == "semantic":
        if workdir is None:
            raise ConfigError("data dedup --mode semantic needs --workdir (embeddings)")
        emb = embed_split(workdir, split, batch_size, step, overrides)
        uids = emb["uids"].tolist()
        keep = semdedup_keep(uids, emb["image"], eps, clusters)
    else:
        raise ConfigError(f"unknown dedup mode {mode!r} (exact or semantic)")
    write_keep_list(out, keep)
    return {"keep_list": out, "mode": mode, "examples": len(uids), "kept": len(keep)}


def cat_split(out: str, config: str, *, split: str | None = None, batch_size: int = 512,
              overrides: Sequence[str] = ()) -> dict[str, object]:
    """Runs CAT (`data.filters.cat` of `config`) over a split's pairs once, writes the uids
    it keeps to `out` (a keep-list for `data.filters.dedup`: training then filters by a
    table lookup, and OCR never runs in the input pipeline) and returns the counts."""
    import tensorflow as tf

    cfg = load_config(config, overrides).data
    decide = CatFilter(cfg.filters.cat)
    kept, dropped = [], collections.Counter()
    for batch in split_batches(cfg, split or cfg.train_split, batch_size):
        for uid, caption, pixels in zip(batch["uid"], batch["caption"], batch["pixels"],
                                        strict=True):
            result = decide(caption, tf.io.parse_tensor(pixels, tf.uint8).numpy())
            if result.keep:
                kept.append(uid.decode("utf-8"))
            else:
                dropped[result.reason] += 1
    write_keep_list(out, kept)
    return {"keep_list": out, "examples": len(kept) + sum(dropped.values()), "kept": len(kept),
            **{f"dropped/{reason}": dropped[reason] for reason in REASONS}}
