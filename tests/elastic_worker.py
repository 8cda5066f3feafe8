"""One process of the elastic-resume tests: `train` on fake Fashion-MNIST captions with
logical streams, recording every global batch's example ids.

Run by tests/test_elastic_resume.py as `python tests/elastic_worker.py SPEC_JSON` with 4 CPU
devices per process, or called in the test process (`train_recording`). The ids of a row
are its image's and tokens' bytes, hashed: fake images are random, so an id names an
example together with its augmentation. Process 0 appends {"step", "ids"} lines to
`spec["ids"]` (if given). `spec["hang_in_commit"]`: the commit of that step's checkpoint
hangs, for a kill -9 during a save.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys

import numpy as np


def elastic_config(spec: dict):
    """The run of `spec` (data_dir, tokenizer, steps, streams, optional vocab and
    checkpoint_every, batch; port, processes, process_id for a distributed process)."""
    from helpers import tiny_config

    port = spec.get("port", 0)
    return tiny_config(
        model={"text": {"vocab_size": spec.get("vocab", 64)}},
        data={"data_dir": spec["data_dir"], "tokenizer": {"path": spec["tokenizer"]},
              "shuffle_buffer": 64, "flip": True, "logical_streams": spec["streams"]},
        train={"steps": spec["steps"], "checkpoint_every": spec.get("checkpoint_every", 1000),
               "keep_checkpoints": 10, "batch_size": spec.get("batch", 16)},
        distributed={"enabled": "on" if port else "off",
                     "coordinator_address": f"localhost:{port}" if port else "",
                     "num_processes": spec.get("processes", 0),
                     "process_id": spec.get("process_id", -1)})  # fmt: skip


def row_ids(local: dict[str, np.ndarray]) -> list[int]:
    """The global batch's row ids, in global row order (a collective)."""
    from contrastive_jax.parallel.distributed import gathered_over_processes

    ids = [int.from_bytes(hashlib.sha1(local["image"][i].tobytes() + local["text"][i].tobytes())
                          .digest()[:7], "little") for i in range(len(local["image"]))]
    return gathered_over_processes(np.array(ids, np.int64)).ravel().tolist()


def train_recording(spec: dict) -> dict:
    """Trains (or resumes) `spec["workdir"]`; SIGTERM at step `spec["stop_at"]` if given,
    as a preempted job gets it. Returns train's result."""
    import jax

    from contrastive_jax.train import loop

    feed, stop_at, steps = loop.to_global, spec.get("stop_at"), []

    def recording(batch, mesh):
        ids = row_ids(batch)
        if jax.process_index() == 0 and "ids" in spec:
            with open(spec["ids"], "a") as f:
                f.write(json.dumps({"step": len(steps) + spec.get("first", 1), "ids": ids})
                        + "\n")
        steps.append(1)
        if stop_at is not None and len(steps) + spec.get("first", 1) - 1 == stop_at:
            import signal

            signal.raise_signal(signal.SIGTERM)
        return feed(batch, mesh)

    loop.to_global = recording
    try:
        return loop.train(elastic_config(spec), spec["workdir"])
    finally:
        loop.to_global = feed


def hang_in_commit(step: int, marker: str) -> None:
    """Makes the commit (orbax's rename of the finished temporary directory) of checkpoint
    `step` write `marker` and hang, so the test can kill -9 the job in the middle of that
    save."""
    import time

    from orbax.checkpoint._src.path import atomicity

    finalize = atomicity.AtomicRenameTemporaryPath.finalize

    async def hanging(self, *args, **kwargs):
        if self.get_final().name == str(step):
            with open(marker, "w") as f:
                f.write(str(self.get()))
            time.sleep(600)
        return await finalize(self, *args, **kwargs)

    atomicity.AtomicRenameTemporaryPath.finalize = hanging


def main(argv: list[str]) -> None:
    import logging

    import jax

    spec = json.loads(argv[0])
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    if "hang_in_commit" in spec:
        hang_in_commit(spec["hang_in_commit"], os.path.join(spec["workdir"], "committing"))
    result = train_recording(spec)
    with open(os.path.join(spec["workdir"], f"result{spec['process_id']}.json"), "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    main(sys.argv[1:])
