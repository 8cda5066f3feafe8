"""What the train loop keeps from each batch besides the arrays it trains on: the running
bad-record counters of `data.sources` and the stream position that checkpoints save so a
resume needs no counting pass (data/positions.py)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

from contrastive_jax.data import positions
from contrastive_jax.data.stream import counter_metrics
from contrastive_jax.parallel import distributed

log = logging.getLogger(__name__)


def saved_positions(meta: dict[str, Any], examples_read: int) -> list[int] | None:
    """This process's stream position saved in a checkpoint's `meta`; None when it has none
    (older checkpoints) or it was saved by another number of processes or at another read
    position (a changed batch size): the pipeline then counts, as it always could."""
    saved = meta.get("stream")
    if not saved:
        return None
    if (saved["examples_read"] != examples_read
            or len(saved["positions"]) != jax.process_count()):
        log.info("the checkpoint's stream positions (%d processes, %d examples read) do not fit "
                 "this run (%d, %d): counting instead", len(saved["positions"]),
                 saved["examples_read"], jax.process_count(), examples_read)
        return None
    return [int(p) for p in saved["positions"][jax.process_index()]]


class StreamProgress:
    """Takes "data_counts" and "stream_position" out of each host batch and keeps their
    running maxima (both only grow along the stream)."""

    def __init__(self, resume_positions: Sequence[int] | None = None):
        self.counts: np.ndarray | None = None
        self.position = None if resume_positions is None else np.asarray(resume_positions,
                                                                          np.int64)

    def take(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """`batch` without the two; keeps their latest values."""
        batch = dict(batch)
        if "data_counts" in batch:
            self.counts = _running_max(self.counts, batch.pop("data_counts"))
        if positions.KEY in batch:
            self.position = _running_max(self.position, batch.pop(positions.KEY))
        return batch

    def counter_metrics(self) -> dict[str, int]:
        """`data/seen` and `data/skipped/<reason>` summed over sources and processes (a
        collective when there are counters, i.e. in every process alike)."""
        if self.counts is None:
            return {}
        return distributed.summed_counters(counter_metrics(self.counts))

    def checkpoint_state(self, examples_read: int) -> dict[str, Any] | None:
        """Every process's position (a collective), for the checkpoint's meta."""
        if self.position is None:
            return None
        gathered = distributed.gathered_over_processes(self.position)
        return {"examples_read": examples_read, "positions": gathered.tolist()}


def _running_max(old: np.ndarray | None, new: np.ndarray) -> np.ndarray:
    return new if old is None else np.maximum(old, new)
