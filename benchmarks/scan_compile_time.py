"""Compile time of the train step, scanned vs unscanned encoder blocks, at several depths.

    nice -n 10 python3 benchmarks/scan_compile_time.py [--depths 3 12] [--config CONFIG]

Prints one JSON line per (depth, scan_layers): both towers get `depth` blocks; the time is
`jit(step).lower(...).compile()` of the full train step (forward, loss, backward, AdamW) on one
CPU device with the demo config's shapes. With scan, compile time should not grow with depth.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402

from contrastive_jax.bench.train_step import synthetic_batch  # noqa: E402
from contrastive_jax.config import load_config  # noqa: E402
from contrastive_jax.parallel.mesh import create_mesh, to_global  # noqa: E402
from contrastive_jax.train.init_state import create_train_state  # noqa: E402
from contrastive_jax.train.optimizer import create_optimizer  # noqa: E402
from contrastive_jax.train.step import train_step_from_config  # noqa: E402


def compile_seconds(config) -> tuple[float, float, int]:
    """(trace + lower s, XLA compile s, lines of optimized HLO) of the config's train step."""
    mesh = create_mesh(config.mesh, devices=jax.devices()[:1])
    tx, _ = create_optimizer(config.optimizer, config.train.steps)
    state, shardings = create_train_state(config, tx, mesh)
    batch = to_global(synthetic_batch(config, config.train.batch_size), mesh)
    step = train_step_from_config(config, mesh, tx, shardings)
    start = time.perf_counter()
    lowered = step.lower(state, batch)
    mid = time.perf_counter()
    compiled = lowered.compile()
    seconds = time.perf_counter() - mid
    # Load-independent: the size of the program XLA optimised and emitted.
    return mid - start, seconds, compiled.as_text().count("\n")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="configs/demo_siglip.py")
    p.add_argument("--depths", type=int, nargs="+", default=[3, 12])
    args = p.parse_args()
    # Discarded warm-up: the first trace in a process pays one-time costs (imports, caches).
    compile_seconds(load_config(args.config, ["model.image.depth=1", "model.text.depth=1",
                                              "mesh.data=1"]))
    for depth in args.depths:
        for scan in (False, True):
            config = load_config(args.config, [f"model.image.depth={depth}",
                                               f"model.text.depth={depth}",
                                               f"model.scan_layers={scan}", "mesh.data=1"])
            lower_s, compile_s, hlo_lines = compile_seconds(config)
            print(json.dumps({"bench": "scan_compile_time", "config": args.config,
                              "depth": depth, "scan_layers": scan,
                              "lower_s": round(lower_s, 2), "compile_s": round(compile_s, 2),
                              "total_s": round(lower_s + compile_s, 2),
                              "optimized_hlo_lines": hlo_lines}), flush=True)


if __name__ == "__main__":
    main()
