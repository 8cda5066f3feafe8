"""Where the training stream stands: examples read and trained on, the running bad-record
counters, the logical streams of the data order (data/order.py) and the per-stream,
per-source positions that checkpoints save so a resume needs no counting pass
(data/positions.py), on any process count that divides the logical streams.

A logical stream's examples do not depend on the batch size (data/stream.py), so
"examples read" is all a resume needs to continue every stream at its exact next unread
example, even with another `train.batch_size` or CiT `oversample` than the run that saved
it (but for `data.debiased_sampling`, whose batches are whole draws from one source).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import jax
import ml_collections
import numpy as np

from contrastive_jax.data import order, positions
from contrastive_jax.data.naflex_stream import ENLARGED
from contrastive_jax.data.stream import counter_metrics
from contrastive_jax.errors import CheckpointError, ConfigError
from contrastive_jax.parallel import distributed

log = logging.getLogger(__name__)


def read_size(config: ml_collections.ConfigDict) -> int:
    """Examples the stream yields per step: CiT reads `oversample` candidates per example."""
    cit = config.train.cit
    return config.train.batch_size * (cit.oversample if cit.enabled else 1)


def examples_read_at(meta: dict[str, Any], step: int, config: ml_collections.ConfigDict) -> int:
    """Global examples the run that saved `meta` (at `step`) had read from the stream."""
    stream = meta.get("stream") or {}
    if "examples_read" in stream:
        return int(stream["examples_read"])
    # Checkpoints written before the stream state was saved record only examples trained on,
    # step x that run's batch size; its read size is known only if the batch size is unchanged.
    seen, batch_size = meta.get("examples_seen"), config.train.batch_size
    if seen is not None and seen != step * batch_size:
        raise CheckpointError(
            f"checkpoint {step} records no stream position and was trained with "
            f"train.batch_size={seen // max(step, 1)}; resume it with that "
            f"'train.batch_size' (the examples it read cannot be recovered otherwise)")
    return step * read_size(config)


def logical_streams(meta: dict[str, Any], step: int,
                    config: ml_collections.ConfigDict) -> int:
    """The run's logical streams (data/order.py): the checkpoint's (`meta` at `step`), else
    `data.logical_streams` or its default (`order.resolve`); ConfigError in one line if
    this process count cannot serve them, or the config names others than the checkpoint.
    A checkpoint that records no streams was written with one per process, as many as
    resume it (the oldest kept no position)."""
    saved = meta.get("stream") or {}
    # Checkpoints written before logical streams existed: process p was stream p.
    recorded = saved.get("logical_streams") or len(saved.get("positions") or ()) or None
    configured = config.data.get("logical_streams", 0)
    if step and recorded and configured and configured != recorded:
        raise ConfigError(f"checkpoint {step} orders its data in {recorded} logical streams; "
                          f"resume it with '{order.KEY}={recorded}' (or 0)")
    if step and not recorded:
        recorded = configured or jax.process_count()
    streams = (recorded if step else None) or order.resolve(configured, read_size(config),
                                                            jax.process_count())
    order.check_count(streams, jax.process_count())
    return streams


def saved_positions(meta: dict[str, Any], examples_read: int,
                    streams: int) -> list[int] | None:
    """This process's streams' positions saved in a checkpoint's `meta`, flat [l * S];
    None when it has none (older checkpoints): the stream then counts, as it always
    could."""
    saved = meta.get("stream") or {}
    if not saved.get("positions"):
        return None
    if saved["examples_read"] != examples_read or len(saved["positions"]) != streams:
        log.warning("the checkpoint's stream positions (%d streams, %d examples read) do not "
                    "fit this run (%d streams, %d examples read): each stream resumes by "
                    "counting", len(saved["positions"]), saved["examples_read"], streams,
                    examples_read)
        return None
    mine = order.process_streams(streams, jax.process_index(), jax.process_count())
    return [int(p) for s in mine for p in saved["positions"][s]]


class StreamProgress:
    """Counts examples read and trained on, and takes "data_counts" and "stream_position"
    out of each host batch, keeping their running maxima (both only grow along the stream)."""

    def __init__(self, examples_read: int = 0, examples_trained: int = 0,
                 resume_positions: Sequence[int] | None = None, debiased: bool = False,
                 logical_streams: int = 1):
        self.examples_read = examples_read
        self.logical_streams = logical_streams
        self.debiased = debiased  # data.debiased_sampling, recorded with the position
        self.examples_trained = examples_trained
        self.counts: np.ndarray | None = None
        # NaFlex images smaller than one patch, enlarged (this process); None: no NaFlex.
        self.enlarged: int | None = None
        self.position = None if resume_positions is None else np.asarray(resume_positions,
                                                                          np.int64)

    @classmethod
    def resume(cls, meta: dict[str, Any], step: int,
               config: ml_collections.ConfigDict) -> StreamProgress:
        """The progress of the checkpoint (`meta`, `step`) a run resumes from (0: fresh)."""
        debiased = bool(config.data.debiased_sampling)
        streams = logical_streams(meta, step, config)
        order.check_batch(streams, read_size(config), "'train.batch_size' (times CiT's "
                          "oversample)")
        if not step:
            return cls(debiased=debiased, logical_streams=streams)
        read = examples_read_at(meta, step, config)
        saved = (meta.get("stream") or {}).get("debiased_sampling", False)
        if len(config.data.sources) > 1 and saved != debiased:
            # Per-example and per-batch choices give other per-source positions.
            raise CheckpointError(
                f"checkpoint {step} was written with data.debiased_sampling={saved}: resume "
                f"it with that 'data.debiased_sampling' (the mixture's positions follow it)")
        if debiased and read != step * read_size(config):
            # One source per batch: the sources' positions depend on the batch size.
            raise CheckpointError(
                f"checkpoint {step} read {read // step} examples per step, and "
                f"data.debiased_sampling draws one source per batch of them: resume it with "
                f"the same 'train.batch_size' (times CiT's oversample)")
        trained = int(meta.get("examples_seen", step * config.train.batch_size))
        return cls(read, trained, saved_positions(meta, read, streams), debiased, streams)

    def take(self, batch: dict[str, np.ndarray], read: int, trained: int
             ) -> dict[str, np.ndarray]:
        """`batch` (of `read` global examples, `trained` of them trained on) without the
        two; keeps their latest values."""
        self.examples_read += read
        self.examples_trained += trained
        batch = dict(batch)
        if "data_counts" in batch:
            self.counts = _running_max(self.counts, batch.pop("data_counts"))
        if positions.KEY in batch:
            self.position = _running_max(self.position, batch.pop(positions.KEY))
        if ENLARGED in batch:
            self.enlarged = (self.enlarged or 0) + int(np.sum(batch.pop(ENLARGED)))
        return batch

    def counter_metrics(self) -> dict[str, int]:
        """`data/seen` and `data/skipped/<reason>` summed over sources and processes (a
        collective when there are counters, i.e. in every process alike)."""
        if self.counts is None:
            return {}
        counters = counter_metrics(self.counts)
        if self.enlarged is not None:
            counters["data/enlarged_smaller_than_patch"] = self.enlarged
        return distributed.summed_counters(counters)

    def checkpoint_state(self) -> dict[str, Any]:
        """Examples read, the logical streams and every stream's position [L][S] (a
        collective), for the checkpoint."""
        state: dict[str, Any] = {"examples_read": self.examples_read,
                                 "debiased_sampling": self.debiased,
                                 "logical_streams": self.logical_streams}
        if self.position is not None:
            # Processes hold consecutive streams, so process order is stream order.
            gathered = distributed.gathered_over_processes(self.position)
            state["positions"] = gathered.reshape(self.logical_streams, -1).tolist()
        return state


def _running_max(old: np.ndarray | None, new: np.ndarray) -> np.ndarray:
    return new if old is None else np.maximum(old, new)
