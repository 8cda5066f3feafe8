"""Restoring a checkpoint for eval/export: the whole train state vs the weights only.

    python3 benchmarks/weights_restore.py [--config configs/recipes/siglip_b16.py] [--dir /tmp/wr]

Saves one checkpoint of the config's freshly initialised train state (AdamW: two moments per
param), then restores it in a fresh process per mode and prints one JSON line each: the
seconds the restore took and the process's peak resident memory over its start (`ru_maxrss`
after minus RSS before; the state and its restore both count). `full` is what evaluation and
export did before (`create_train_state` + `Checkpointer.restore`); `weights` is what they do
now (`weights_state_shapes` + `Checkpointer.restore_weights`).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _child(mode: str, config_spec: str, directory: str) -> dict:
    import jax

    from contrastive_jax.checkpoints.store import Checkpointer
    from contrastive_jax.config import load_config
    from contrastive_jax.models.state import weights_state_shapes
    from contrastive_jax.parallel.mesh import create_mesh
    from contrastive_jax.train.init_state import create_train_state
    from contrastive_jax.train.optimizer import create_optimizer

    config = load_config(config_spec)
    mesh = create_mesh(config.mesh)
    checkpointer = Checkpointer(directory, config)
    tx, _ = create_optimizer(config.optimizer, config.train.steps)
    if mode == "save":
        state, _ = create_train_state(config, tx, mesh)
        checkpointer.save(state, examples_seen=0, force=True)
        checkpointer.close()
        return {"mode": mode, "params": sum(x.size for x in jax.tree.leaves(state.params))}
    before, start = _rss_mib(), time.perf_counter()
    if mode == "full":
        state, shardings = create_train_state(config, tx, mesh)
        state, _ = checkpointer.restore(state, shardings)
    else:
        shapes, shardings = weights_state_shapes(config, mesh)
        state, _ = checkpointer.restore_weights(shapes, shardings)
    jax.block_until_ready(state.params)
    seconds = time.perf_counter() - start
    checkpointer.close()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    return {"mode": mode, "restore_s": round(seconds, 2),
            "peak_over_start_mib": round(peak - before)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="configs/recipes/siglip_b16.py")
    p.add_argument("--dir", default="/tmp/weights_restore_bench")
    p.add_argument("--child", choices=["save", "full", "weights"], help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(_child(args.child, args.config, args.dir)), flush=True)
        return
    env = {**os.environ, "JAX_PLATFORMS": os.environ.get("JAX_PLATFORMS", "cpu")}
    for mode in ("save", "full", "weights", "full", "weights"):
        out = subprocess.run([sys.executable, __file__, "--config", args.config, "--dir",
                              args.dir, "--child", mode], cwd=ROOT, env=env,
                             capture_output=True, text=True)
        if out.returncode:
            sys.exit(out.stderr[-2000:])
        row = json.loads(out.stdout.strip().splitlines()[-1])
        print(json.dumps({"bench": "weights_restore", "config": args.config, **row}), flush=True)


if __name__ == "__main__":
    main()
