"""The training loop: wires config, mesh, state, data, step, checkpoints, metrics and evals."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import signal
import time
from collections.abc import Callable
from typing import Any

import jax
import ml_collections
import numpy as np
import optax
from jax.experimental import multihost_utils
from jax.sharding import Mesh

from contrastive_jax import paths
from contrastive_jax.checkpoints.store import Checkpointer
from contrastive_jax.config import config_to_json
from contrastive_jax.config.eval_tasks import any_due, tasks_of
from contrastive_jax.data.filters import FilterCounters
from contrastive_jax.data.naflex_stream import model_patch, run_batch_sizes
from contrastive_jax.data.render_text import TextRenderer
from contrastive_jax.data.stream import train_dataset
from contrastive_jax.data.tokenizer import Tokenizer
from contrastive_jax.data.tokenizer_setup import ensure_tokenizer
from contrastive_jax.evaluate.runner import run_evals
from contrastive_jax.models.state import ModelDef, TrainState
from contrastive_jax.objectives import objective_of
from contrastive_jax.parallel import distributed
from contrastive_jax.parallel.mesh import (
    BATCH_AXES,
    batch_size_per_process,
    create_mesh,
    to_global,
)
from contrastive_jax.train import embedding_cache
from contrastive_jax.train.cit import CitSelector
from contrastive_jax.train.embedding_cache import check_image_tower_locked
from contrastive_jax.train.init_from import init_params
from contrastive_jax.train.init_state import create_train_state
from contrastive_jax.train.lock import check_lock, lock_patterns
from contrastive_jax.train.metrics import MetricsWriter, progress_bar
from contrastive_jax.train.nonfinite import NonfiniteGuard
from contrastive_jax.train.optimizer import create_optimizer
from contrastive_jax.train.step import NONFINITE, StepFn, train_step_from_config
from contrastive_jax.train.stream_progress import StreamProgress, logical_streams
from contrastive_jax.train.stream_progress import read_size as stream_read_size

log = logging.getLogger(__name__)


class StopRequest:
    """Turns SIGTERM / SIGINT into a flag the loop checks after each step."""

    def __init__(self):
        self.signal: int | None = None
        self._previous = {}

    def __enter__(self) -> StopRequest:
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if self.signal is not None:  # a second Ctrl-C: stop now, without saving
            raise KeyboardInterrupt
        self.signal = signum

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def enable_compilation_cache(directory: str | None) -> None:
    """Persists compiled executables in `directory`, so a restarted run skips compiling."""
    if directory:
        jax.config.update("jax_compilation_cache_dir", directory)


def check_vocab(config: ml_collections.ConfigDict, tokenizer: Tokenizer | TextRenderer) -> None:
    """ConfigError if the text encoder's vocabulary does not fit the model (its objective's
    check: token ids against the vocab_size, synsets against the head's rows)."""
    objective_of(config.model.name).check_vocab(config.model, tokenizer)


@dataclasses.dataclass
class Run:
    """Everything one training run needs, built from its config."""

    config: ml_collections.ConfigDict
    mesh: Mesh
    tokenizer: Tokenizer | TextRenderer  # TextRenderer: CLIPPO renders captions
    model_def: ModelDef
    state: TrainState
    step_fn: StepFn
    unmasked_step_fn: StepFn | None  # FLIP's unmasked phase (train.unmask_from); None: none
    schedule: optax.Schedule
    checkpointer: Checkpointer
    resumed_meta: dict[str, Any]  # the restored checkpoint's metadata; {} on a fresh start


def setup(config: ml_collections.ConfigDict, workdir: str) -> Run:
    """Builds the mesh, tokenizer, sharded state (restored if the workdir has one) and step."""
    paths.check_reachable(workdir, "--workdir")  # a missing bucket: one line, before compiling
    paths.makedirs(workdir)
    enable_compilation_cache(config.train.compilation_cache_dir)
    if jax.process_index() == 0:
        paths.write_text(paths.join(workdir, "config.json"), config_to_json(config))
    mesh = create_mesh(config.mesh)
    batch_size_per_process(config.train.batch_size, mesh)  # fail early on a bad split
    if jax.process_index() == 0:  # one process trains the tokenizer; the others load it
        ensure_tokenizer(config.data, workdir)
    multihost_utils.sync_global_devices("tokenizer ready")
    tokenizer = ensure_tokenizer(config.data, workdir)
    check_vocab(config, tokenizer)

    checkpointer = Checkpointer(workdir, config)
    latest = checkpointer.latest_step()
    if latest is not None:  # a process count that cannot continue the data order: refused
        logical_streams(checkpointer.saved_meta(latest), latest, config)  # before any compile
    tx, schedule = create_optimizer(config.optimizer, config.train.steps)
    state, shardings = create_train_state(config, tx, mesh)
    check_lock(state.params, config.train.locked)
    resumed_meta = {}
    if latest is not None:
        state, resumed_meta = checkpointer.restore(state, shardings)
        log.info("resumed from step %d", int(state.step))
    elif config.train.init_from.path:
        params, copied = init_params(state.params, config.train.init_from)
        state = state.replace(params=params)
        log.info("initialised %d params from %s", len(copied), config.train.init_from.path)

    model_def = ModelDef(config.model)
    step_fn = train_step_from_config(config, mesh, tx, shardings, model_def=model_def)
    unmasked = None
    if config.train.unmask_from is not None:  # compiled on first use only
        unmasked = train_step_from_config(config, mesh, tx, shardings, model_def=model_def,
                                          masked=False)
    return Run(config, mesh, tokenizer, model_def, state, step_fn, unmasked, schedule,
               checkpointer, resumed_meta)


def train(config: ml_collections.ConfigDict, workdir: str, *,
          on_stop: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Trains (or resumes) in `workdir`; returns the final metrics, evals included.

    `on_stop(result)`: called after a stop by SIGTERM / SIGINT once the checkpoint is
    committed and the metrics are closed, while the input pipeline still runs. The CLI ends
    the process there: tearing down a tf.data iterator waits for the elements its threads
    have in flight, and interpreter shutdown collects every jax and TensorFlow object,
    which took 7 to 22 s on the demo, against the ~30 s a preemption notice gives."""
    distributed.initialize(config)  # before anything touches a device
    run = setup(config, workdir)
    # Every exit, an error's too, waits for the checkpoint being written and closes the
    # checkpointer and the metrics writer: the last good checkpoint stays whole.
    with contextlib.ExitStack() as on_exit:
        on_exit.callback(run.checkpointer.close)
        return _train(run, workdir, on_exit, on_stop)


def _train(run: Run, workdir: str, on_exit: contextlib.ExitStack,
           on_stop: Callable[[dict[str, Any]], None] | None) -> dict[str, Any]:
    config = run.config
    batch_size, total_steps = config.train.batch_size, config.train.steps
    step = int(run.state.step)
    # CiT reads k * batch_size candidates per step and trains on the batch_size it selects.
    cit = None
    if config.train.cit.enabled:
        cit = CitSelector(config, run.model_def, run.tokenizer, run.mesh)
        if step:
            cit.resume(run.state, step, run.checkpointer)
    saved_with_state = cit.checkpoint_extra if cit else lambda: None
    read_size = stream_read_size(config)
    counters = FilterCounters()
    cached = None
    if config.train.embedding_cache.enabled:
        check_image_tower_locked(run.state.params, lock_patterns(config.train.locked))
        cached = embedding_cache.load_or_build(config, workdir, run.model_def, run.state,
                                               run.mesh)
    # Every logical stream continues at its exact next unread example, whatever the batch
    # size and the process count were (a count that cannot is refused here, in one line).
    progress = StreamProgress.resume(run.resumed_meta, step, config)
    # NaFlex token-budget batching: a global batch size per budget (None: batch_size).
    sizes = run_batch_sizes(config.data, progress.logical_streams, config.train.microbatches
                            * int(np.prod([run.mesh.shape[a] for a in BATCH_AXES])))
    data = iter(train_dataset(
        config.data, run.tokenizer, global_batch_size=read_size,
        process_index=jax.process_index(), process_count=jax.process_count(),
        start_example=progress.examples_read, seed=config.seed,
        filter_counters=counters, image_embeddings=cached,
        resume_positions=progress.position,
        logical_streams=progress.logical_streams,
        naflex_patch=model_patch(config.model.image), naflex_batch_sizes=sizes,
        start_step=step).as_numpy_iterator())
    state = run.state
    guard = NonfiniteGuard(config.train.nonfinite, config.train.nonfinite_limit,
                           total=int(run.resumed_meta.get("nonfinite_steps", 0)))

    def save(force: bool = False) -> None:
        if not run.checkpointer.due(step, force):
            return
        guard.flush()  # a stop at this step must come before its save
        run.checkpointer.save(state, examples_seen=progress.examples_trained, force=force,
                              extra=saved_with_state(), stream=progress.checkpoint_state,
                              counters={"nonfinite_steps": guard.total})

    evaluate = functools.partial(run_evals, config, run.model_def, tokenizer=run.tokenizer,
                                 mesh=run.mesh)
    tasks = tasks_of(config)
    writer = MetricsWriter(workdir)
    on_exit.callback(writer.close)
    bar = progress_bar(total_steps, step, batch_size, config.train.progress_bar)
    on_exit.callback(bar.close)
    mask_ratio = config.model.image.get("mask_ratio", 0.0)
    with StopRequest() as stop:
        timer = Throughput(progress.examples_trained)
        while step < total_steps and stop.signal is None:
            local = next(data)
            # Token-budget batching: this step's size is its budget's (CiT is refused there).
            rows = read_size if sizes is None else len(local["text"]) * jax.process_count()
            batch = to_global(progress.take(local, rows, batch_size if sizes is None else rows),
                              run.mesh)
            if cit:
                batch, cit_metrics = cit(state, batch, step)
            unmasked = run.unmasked_step_fn and step >= config.train.unmask_from
            state, metrics = (run.unmasked_step_fn if unmasked else run.step_fn)(state, batch)
            step += 1
            guard.push(step, metrics.pop(NONFINITE))  # checks the step before this one
            bar.update(batch_size if sizes is None else rows)
            save()
            if step % config.train.log_every == 0 or step == total_steps:
                guard.flush()
                metrics = jax.device_get(metrics)  # waits for the step: honest timing
                metrics["train/nonfinite_steps"] = guard.total
                metrics["train/examples_per_sec"] = timer.rate(progress.examples_trained)
                if sizes is not None:
                    metrics["train/batch_size"] = rows
                metrics["train/lr"] = float(run.schedule(step - 1))
                if mask_ratio:  # FLIP: the share of patches this step dropped
                    metrics["train/mask_ratio"] = 0.0 if unmasked else mask_ratio
                metrics.update(progress.counter_metrics())
                metrics.update(distributed.summed_counters(counters.as_dict()))
                if cit:
                    metrics.update(jax.device_get(cit_metrics))
                writer.write(step, metrics)
                bar.set_postfix(loss=f"{float(metrics['train/loss']):.4f}")
            if any_due(tasks, step, config.train.eval_every):
                if step < total_steps:
                    writer.write(step, evaluate(state, step=step))
                timer.restart(progress.examples_trained)  # eval time is not training time
        bar.close()
        guard.flush()
        save(force=True)
        # Committed, not only started: close() waits for orbax's finalize (the rename of
        # the step's temporary folder), so the message below is true when it prints.
        run.checkpointer.close()
    if stop.signal is not None:
        writer.close()
        log.warning("stopped by signal %d at step %d; checkpoint saved", stop.signal, step)
        result = {"step": step, "interrupted_by": int(stop.signal)}
        if on_stop is not None:
            on_stop(result)  # `data` is still referenced here: see train()
        return result
    final = evaluate(state)
    writer.write(step, final)
    writer.close()
    return {"step": step, **{k: float(v) for k, v in final.items()}}


class Throughput:
    """Examples per second between two log points (`examples`: trained on so far)."""

    def __init__(self, examples: int):
        self.restart(examples)

    def restart(self, examples: int) -> None:
        self.examples, self.time = examples, time.perf_counter()

    def rate(self, examples: int) -> float:
        now = time.perf_counter()
        value = (examples - self.examples) / max(now - self.time, 1e-9)
        self.examples, self.time = examples, now
        return value
