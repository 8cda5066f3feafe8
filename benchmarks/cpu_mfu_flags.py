"""Train-step MFU of a config on the CPU under several XLA CPU flag sets, one process each.

    nice -n 10 python3 benchmarks/cpu_mfu_flags.py [--config configs/demo_siglip.py] [--steps 10]

Each flag set runs in a fresh process (XLA reads XLA_FLAGS once): the matmul peak (best of
5) before and after the step benchmark, the higher of the two as the peak, then one JSON line
with the step's median and best times and both MFUs. The FLOPs are XLA's count of the
ordinary step, the same under every flag set, so only the timings differ.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FLAG_SETS = {
    "default": "",
    "xnnpack": "--xla_cpu_use_xnnpack=true",
    "onednn": "--xla_cpu_use_onednn=true",
    "concurrency_scheduler": "--xla_cpu_enable_concurrency_optimized_scheduler=true",
}
_CHILD = """
import json, sys
from contrastive_jax.bench.flops import matmul_peak
from contrastive_jax.bench.train_step import bench_train_step
from contrastive_jax.config import load_config
config = load_config(sys.argv[1], ["mesh.data=1"])
before = matmul_peak()["flops_per_sec"]
row = bench_train_step(config, steps=int(sys.argv[2]))
peak = max(before, matmul_peak()["flops_per_sec"])
row.update(peak_flops_per_sec=peak, mfu=round(row["flops_per_sec"] / peak, 4),
           mfu_best=round(row["flops_per_step"] / (row["step_ms_best"] / 1e3) / peak, 4))
print(json.dumps(row))
"""


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="configs/demo_siglip.py")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--only", nargs="+", choices=list(FLAG_SETS), default=list(FLAG_SETS))
    args = p.parse_args()
    for name in args.only:
        env = {**os.environ, "XLA_FLAGS": FLAG_SETS[name], "JAX_PLATFORMS": "cpu"}
        out = subprocess.run([sys.executable, "-c", _CHILD, args.config, str(args.steps)],
                             cwd=ROOT, env=env, capture_output=True, text=True)
        if out.returncode:
            print(json.dumps({"flags": name, "error": out.stderr.strip().splitlines()[-1]}))
            continue
        row = json.loads(out.stdout.strip().splitlines()[-1])
        print(json.dumps({"flags": name, "xla_flags": FLAG_SETS[name], **row}), flush=True)


if __name__ == "__main__":
    main()
