"""Train-step MFU of a config on the CPU under several process set-ups, one process each.

    python3 benchmarks/cpu_mfu_variants.py [--config configs/demo_siglip.py] [--steps 30]
        [--rounds 3] [--only malloc_2dev ...]

A variant is an environment (the CLI's malloc tuning on or off, XLA flags) plus `bench step`
arguments (one jax device, or one per core). Each runs `contrastive-jax bench step` in a
fresh process (XLA and glibc read their settings once); the rounds interleave the variants
so that a shared machine's load hits all alike. One JSON line per run, then one summary
line per variant with the median over rounds of the step's median and best MFU.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CORES = os.cpu_count() or 1
VARIANTS = {  # name: (environment, extra `bench step` arguments)
    "baseline": ({"CONTRASTIVE_JAX_CPU_MALLOC": "off"}, []),
    "malloc": ({"CONTRASTIVE_JAX_CPU_MALLOC": "on"}, []),
    "devices_per_core": ({"CONTRASTIVE_JAX_CPU_MALLOC": "off"}, ["--cpu-devices", str(CORES)]),
    "malloc_devices_per_core": ({"CONTRASTIVE_JAX_CPU_MALLOC": "on"},
                                ["--cpu-devices", str(CORES)]),
    # One pool thread per device, as XLA sizes it (the CLI gives two; see cpu_host.py).
    "malloc_devices_per_core_pool_1x": ({"CONTRASTIVE_JAX_CPU_MALLOC": "on",
                                         "PJRT_NPROC": str(CORES)},
                                        ["--cpu-devices", str(CORES)]),
    # The CLI's heap on 4 KiB pages: it restarts with glibc.malloc.hugetlb=1 unless set.
    "malloc_devices_per_core_no_huge_pages": ({"CONTRASTIVE_JAX_CPU_MALLOC": "on",
                                               "GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"},
                                              ["--cpu-devices", str(CORES)]),
    "malloc_2_devices_per_core": ({"CONTRASTIVE_JAX_CPU_MALLOC": "on"},
                                  ["--cpu-devices", str(2 * CORES)]),
    "malloc_devices_per_core_concurrency": (
        {"CONTRASTIVE_JAX_CPU_MALLOC": "on",
         "XLA_FLAGS": "--xla_cpu_enable_concurrency_optimized_scheduler=true"},
        ["--cpu-devices", str(CORES)]),
}
# XLA:CPU flags tried on the default set-up (malloc tuning, one device per core).
XLA_FLAG_VARIANTS = {
    "ynn_dot_eltwise_reduce": "--xla_cpu_experimental_ynn_fusion_type="
                              "dot,eltwise,reduce,individual_dot",
    "ynn_dot_eltwise": "--xla_cpu_experimental_ynn_fusion_type=dot,eltwise,individual_dot",
    "xnn_graph_greedy": "--xla_cpu_experimental_xnn_graph_fusion_mode="
                        "XNN_GRAPH_FUSION_MODE_GREEDY",
    "onednn": "--xla_cpu_use_onednn=true",
    "legacy_emitters": "--xla_cpu_use_fusion_emitters=false",
    "fast_math": "--xla_cpu_enable_fast_math=true",
    "default_scheduler": "--xla_cpu_enable_concurrency_optimized_scheduler=false",
}
for _name, _flags in XLA_FLAG_VARIANTS.items():
    VARIANTS[f"malloc_devices_per_core_{_name}"] = (
        {"CONTRASTIVE_JAX_CPU_MALLOC": "on", "XLA_FLAGS": _flags}, ["--cpu-devices", str(CORES)])
KEYS = ("devices", "step_ms", "step_ms_best", "mfu", "mfu_best", "cpu_malloc_tuned",
        "cpu_heap_huge_pages")


def run_variant(name: str, config: str, steps: int) -> dict:
    env_extra, args = VARIANTS[name]
    env = {**{k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"},
           "JAX_PLATFORMS": "cpu", "XLA_FLAGS": "", **env_extra}
    cmd = [sys.executable, "-m", "contrastive_jax.cli", "bench", "step", "--config", config,
           "--steps", str(steps), *args]
    out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if out.returncode:
        return {"variant": name, "error": out.stderr.strip().splitlines()[-1]}
    row = json.loads(out.stdout.strip().splitlines()[-1])
    peak = json.loads(out.stdout.strip().splitlines()[-2])["flops_per_sec"]
    return {"variant": name, "peak_gflops": round(peak / 1e9, 1),
            **{k: row[k] for k in KEYS}}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="configs/demo_siglip.py")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--only", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    args = p.parse_args()
    runs: dict[str, list[dict]] = {name: [] for name in args.only}
    for _ in range(args.rounds):
        for name in args.only:
            row = run_variant(name, args.config, args.steps)
            print(json.dumps(row), flush=True)
            if "error" not in row:
                runs[name].append(row)
    for name, rows in runs.items():
        if rows:
            print(json.dumps({"summary": name, "runs": len(rows), **{
                f"median_{k}": statistics.median(r[k] for r in rows)
                for k in ("step_ms", "step_ms_best", "mfu", "mfu_best")}}), flush=True)


if __name__ == "__main__":
    main()
