"""One process of the multi-process test: trains a tiny model on synthetic batches, then runs
zero-shot counting; writes {"losses": [...], "zeroshot": {...}} as JSON to RESULT_PATH.

Run by tests/test_multiprocess.py as
`python tests/multiprocess_worker.py PORT NUM_PROCS ID RESULT_PATH` with 4 CPU devices per
process; a file, not stdout, because gloo's C++ logging writes to the same stdout and can land
in the middle of a Python line. `run()` is also called in the test process on 8 devices.
"""

from __future__ import annotations

import json
import sys

import jax
import numpy as np

STEPS = 20
EVAL_ROWS, EVAL_BATCH = 30, 12  # the last batch is padded: 6 real rows, 6 masked


def eval_batches(num_classes: int) -> list[dict[str, np.ndarray]]:
    """Global eval batches as data.labelled batches them, padded with mask 0."""
    rng = np.random.default_rng(7)
    batches = []
    for start in range(0, EVAL_ROWS, EVAL_BATCH):
        n = min(EVAL_BATCH, EVAL_ROWS - start)
        image = np.zeros((EVAL_BATCH, 28, 28, 1), np.float32)
        image[:n] = rng.uniform(-1, 1, size=(n, 28, 28, 1))
        label = np.full(EVAL_BATCH, -1, np.int32)
        label[:n] = rng.integers(0, num_classes, size=n)
        batches.append({"image": image, "label": label,
                        "mask": (np.arange(EVAL_BATCH) < n).astype(np.int32)})
    return batches


def run(config, devices=None) -> dict:
    """Trains STEPS steps, feeding this process's rows of each global batch; then zero-shot."""
    from helpers import synthetic_batches

    from contrastive_jax.evaluate.zeroshot import zeroshot_accuracy
    from contrastive_jax.models.state import ModelDef
    from contrastive_jax.parallel.mesh import create_mesh, process_rows, to_global
    from contrastive_jax.train.init_state import create_train_state
    from contrastive_jax.train.optimizer import create_optimizer
    from contrastive_jax.train.step import train_step_from_config

    mesh = create_mesh(config.mesh, devices=devices)
    tx, _ = create_optimizer(config.optimizer, config.train.steps)
    state, shardings = create_train_state(config, tx, mesh)
    model_def = ModelDef(config.model)
    # The configured step, not train.loop, which would import TensorFlow (slow).
    step = train_step_from_config(config, mesh, tx, shardings, model_def=model_def)
    losses = []
    for batch in synthetic_batches(STEPS, config.train.batch_size):
        local = {k: process_rows(v) for k, v in batch.items()}
        state, metrics = step(state, to_global(local, mesh))
        losses.append(float(jax.device_get(metrics["train/loss"])))
    classifier = np.random.default_rng(3).normal(size=(4, config.model.embed_dim))
    classifier /= np.linalg.norm(classifier, axis=-1, keepdims=True)
    zs = zeroshot_accuracy(model_def, state, classifier.astype(np.float32),
                           eval_batches(4), mesh)
    return {"losses": losses, "process_count": jax.process_count(),
            "local_devices": jax.local_device_count(),
            "zeroshot": {k: zs[k] for k in ("top1", "top5", "count")}}


def worker_config(port: int = 0, num_processes: int = 0, process_id: int = -1):
    from helpers import tiny_config

    # fsdp=2 as well, so sharded params and their all-gathers cross the process boundary.
    return tiny_config(
        train={"steps": STEPS},
        mesh={"data": -1, "fsdp": 2, "fsdp_min_size": 256},
        distributed={"enabled": "on" if port else "off",
                     "coordinator_address": f"localhost:{port}" if port else "",
                     "num_processes": num_processes, "process_id": process_id})


def main(argv: list[str]) -> None:
    port, num_processes, process_id = map(int, argv[:3])
    result_path = argv[3]
    # Cross-process collectives on CPU need an implementation; gloo ships with jaxlib.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    from contrastive_jax.parallel.distributed import (
        gathered_over_processes,
        initialize,
        summed_counters,
    )

    config = worker_config(port, num_processes, process_id)
    assert initialize(config)
    result = run(config)
    # What the train loop does with each process's filter and data counters at a log step;
    # "big" is past int32, and the processes list the keys in different orders.
    me = jax.process_index()
    counts = {"big": 2**40 + me, "small": me + 1}
    result["summed_counters"] = summed_counters(dict(reversed(counts.items())) if me else counts)
    # What checkpoints store of the stream positions: every process's row, in process order.
    result["gathered"] = gathered_over_processes(np.array([2**41 + me, me])).tolist()
    with open(result_path, "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    main(sys.argv[1:])
