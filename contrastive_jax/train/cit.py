"""CiT, curation in training (Xu et al. 2023): pick the training batch from k*B candidates.

Each step the data iterator yields an oversampled candidate batch of k*B examples. A jitted
selection embeds the candidates' captions with the CURRENT text tower, scores each by its
highest cosine to the metadata embeddings (e.g. class names), and gathers B rows:
- "topk": the B best scores (lax.top_k);
- "threshold": candidates scoring >= threshold first, in stream order (CiT accumulates
  those that pass); if fewer than B pass, the batch is filled with the best of the rest, so
  the shape stays static. `cit/passed` reports how many passed.
The metadata embeddings are recomputed from the current params every `refresh_every` steps
and when a run starts; checkpoints carry the ones in use, so a resumed run selects exactly
as the uninterrupted one. The train step itself is unchanged.
"""

from __future__ import annotations

import logging
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
from jax.sharding import Mesh

from contrastive_jax import paths
from contrastive_jax.checkpoints.store import Checkpointer
from contrastive_jax.data.schema import check_cit_config
from contrastive_jax.data.tokenizer import Tokenizer
from contrastive_jax.datasets.catalogue import class_names
from contrastive_jax.errors import ConfigError, DataError, InputNotFoundError
from contrastive_jax.evaluate.zeroshot import class_embeddings
from contrastive_jax.models.state import ModelDef, TrainState
from contrastive_jax.parallel.mesh import batch_sharding, replicated

log = logging.getLogger(__name__)
def selection_indices(scores: jax.Array, batch_size: int, keep: str,
                      threshold: float) -> tuple[jax.Array, jax.Array]:
    """(indices [batch_size] of the chosen candidates, number of candidates that passed)."""
    n = scores.shape[0]
    passed = scores >= threshold
    if keep == "topk":
        priority = scores
    else:
        # Passing candidates rank above every score in [-1, 1], earliest first.
        position = jnp.arange(n, dtype=scores.dtype) / n
        priority = jnp.where(passed, 3.0 - position, scores)
    _, idx = jax.lax.top_k(priority, batch_size)
    return idx, jnp.sum(passed.astype(jnp.int32))


def make_select_fn(model_def: ModelDef, mesh: Mesh, batch_size: int, keep: str,
                   threshold: float):
    """Jitted (params, rest, candidates, metadata_emb) -> (batch of B rows, metrics)."""

    def select(params, rest, candidates, metadata_emb):
        ztxt = model_def.bind(params, rest).encode_text(candidates["text"])
        scores = jnp.max(ztxt @ metadata_emb.T, axis=-1)
        idx, passed = selection_indices(scores, batch_size, keep, threshold)
        batch = {k: jnp.take(v, idx, axis=0) for k, v in candidates.items()}
        metrics = {"cit/passed": passed, "cit/score_selected": jnp.mean(scores[idx]),
                   "cit/score_candidates": jnp.mean(scores)}
        return batch, metrics

    return jax.jit(select, out_shardings=(batch_sharding(mesh), replicated(mesh)))


def metadata_entries(config: ml_collections.ConfigDict) -> list[str]:
    path = config.train.cit.metadata
    if path:
        if not paths.isfile(path):
            raise InputNotFoundError(f"config key 'train.cit.metadata': no file {path}")
        with paths.open_file(path, "r", encoding="utf-8") as f:
            entries = [line.strip() for line in f if line.strip()]
    elif config.data.sources:  # `data.dataset` is not what these sources are about
        raise ConfigError("config key 'train.cit.metadata' is needed with 'data.sources' "
                          "(without it CiT uses the class names of 'data.dataset')")
    else:
        entries = class_names(config.data.dataset, config.data.data_dir)
    if not entries:
        raise DataError(f"CiT metadata is empty ({path or config.data.dataset})")
    return [e.lower() for e in entries] if config.data.lowercase else entries


class CitSelector:
    """Holds the metadata embeddings and turns each candidate batch into a training batch."""

    def __init__(self, config: ml_collections.ConfigDict, model_def: ModelDef,
                 tokenizer: Tokenizer, mesh: Mesh):
        cfg = config.train.cit
        check_cit_config(cfg)
        self.cfg, self.model_def, self.tokenizer, self.mesh = cfg, model_def, tokenizer, mesh
        self.entries = metadata_entries(config)
        self.max_len = config.data.max_len
        self.metadata_emb: jax.Array | None = None
        self.refreshed_at: list[int] = []
        self._select = make_select_fn(model_def, mesh, config.train.batch_size, cfg.keep,
                                      cfg.threshold)

    def refresh(self, state: TrainState, step: int) -> None:
        emb = class_embeddings(self.model_def, state, self.tokenizer, self.entries, ("{}",),
                               self.max_len, self.mesh)
        self.metadata_emb = jax.device_put(jnp.asarray(emb), replicated(self.mesh))
        self.refreshed_at.append(step)

    def checkpoint_extra(self) -> dict[str, jax.Array] | None:
        """What a resumed run needs to select as this run would: the metadata embeddings in
        use (saved with each checkpoint)."""
        return None if self.metadata_emb is None else {"cit_metadata_emb": self.metadata_emb}

    def resume(self, state: TrainState, step: int, checkpointer: Checkpointer) -> None:
        """Takes the metadata embeddings saved with checkpoint `step`, so that the steps up
        to the next refresh select exactly as the interrupted run would have."""
        self.refresh(state, step)  # gives the restore its shapes; kept if nothing was saved
        saved = checkpointer.restore_extra(step, self.checkpoint_extra())
        if saved is None:
            log.warning("checkpoint %d holds no CiT metadata embeddings; using ones computed "
                        "at the resume step", step)
            return
        self.metadata_emb = saved["cit_metadata_emb"]
        self.refreshed_at.pop()  # those in use come from the interrupted run's last refresh

    def __call__(self, state: TrainState, candidates: dict[str, jax.Array],
                 step: int) -> tuple[dict[str, jax.Array], dict[str, Any]]:
        """The training batch for `step` (0-based) chosen from `candidates`."""
        if self.metadata_emb is None or step % self.cfg.refresh_every == 0:
            self.refresh(state, step)
        return self._select(state.params, state.rest, candidates, self.metadata_emb)
