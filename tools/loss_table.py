"""Runs the Fashion-MNIST demo once per loss and writes the zero-shot table (docs/losses.md).

    nice -n 15 python3 tools/loss_table.py --runs /work/runs [--only hn_nce macl] [--steps 1200]
    python3 tools/loss_table.py --runs /work/runs --table-only   # just re-render the table

Runs go one at a time (each one uses every core) into RUNS/losstable-<name>; a run whose
workdir already holds a final zero-shot result is not repeated; one stopped midway resumes
from its checkpoint (its wall time then covers only the resumed part). Results accumulate in
RUNS/losstable.json. The demo trains on one CPU device, so the reference-only losses
(hn_nce, debiased_softmax, macl), which refuse a mesh that splits the batch, run as they are.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# name -> (config spec, extra --config overrides). Softmax-family losses use demo_clip.py's
# temperature init (1/0.07, no bias); sigmoid ones demo_siglip.py's (t=10, b=-10).
VARIANTS: dict[str, tuple[str, list[str]]] = {
    "hn_nce": ("configs/demo_clip.py:loss=hn_nce", []),
    "debiased_softmax": ("configs/demo_clip.py:loss=debiased_softmax", []),
    "macl": ("configs/demo_clip.py:loss=macl", []),
    "softmax": ("configs/demo_clip.py:loss=softmax", []),
    "sigmoid": ("configs/demo_siglip.py:loss=sigmoid", []),
    "softmax_sharded-positives_labels": (
        "configs/demo_clip.py", ["--config.loss.positives=labels"]),
    "sigmoid_chunked-positives_labels": (
        "configs/demo_siglip.py", ["--config.loss.positives=labels"]),
    "softmax_sharded-align_uniform": (
        "configs/demo_clip.py",
        ["--config.loss.align_weight=0.1", "--config.loss.uniform_weight=0.1"]),
}
# Measured earlier with the same demo configs (README's table); not re-run by default.
BASELINES = {
    "softmax_sharded": {"command": "configs/demo_clip.py", "top1": 0.8743, "top5": 0.9971,
                        "wall_s": 339.0, "note": "earlier run (README)"},
    "sigmoid_chunked": {"command": "configs/demo_siglip.py", "top1": 0.8711, "top5": 0.9975,
                        "wall_s": 339.0, "note": "earlier run (README)"},
}


def command(name: str, workdir: str, steps: int | None) -> list[str]:
    spec, overrides = VARIANTS[name]
    if steps is not None:
        spec += ("," if ":" in spec else ":") + f"steps={steps}"
    return [sys.executable, "-m", "contrastive_jax.cli", "train", "--config", spec,
            "--workdir", workdir, "--config.train.progress_bar=False", *overrides]


def final_zeroshot(workdir: str) -> dict[str, float] | None:
    """The last record of metrics.jsonl carrying zero-shot top-1/top-5, or None."""
    path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.exists(path):
        return None
    found = None
    with open(path, encoding="utf-8") as f:
        for line in f:
            rec = json.loads(line)
            if "zeroshot/fashion_mnist/top1" in rec:
                found = {"top1": rec["zeroshot/fashion_mnist/top1"],
                         "top5": rec["zeroshot/fashion_mnist/top5"], "step": rec["step"]}
    return found


def render(results: dict[str, dict]) -> str:
    lines = ["| loss | command | zero-shot top-1 | top-5 | wall time |", "|---|---|---|---|---|"]
    for name, r in results.items():
        wall = f"{int(r['wall_s']) // 60} min {int(r['wall_s']) % 60:02d} s"
        note = f" ({r['note']})" if r.get("note") else ""
        lines.append(f"| `{name}` | `{r['command']}` | {r['top1']:.4f} | {r['top5']:.4f} | "
                     f"{wall}{note} |")
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", required=True, help="parent directory of the run workdirs")
    p.add_argument("--only", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    p.add_argument("--steps", type=int, default=None, help="override the demo's 1,200 steps")
    p.add_argument("--table-only", action="store_true", help="render the collected results")
    args = p.parse_args()
    os.makedirs(args.runs, exist_ok=True)
    results_path = os.path.join(args.runs, "losstable.json")
    results = dict(BASELINES)
    if os.path.exists(results_path):
        with open(results_path, encoding="utf-8") as f:
            results.update(json.load(f))
    for name in [] if args.table_only else args.only:
        workdir = os.path.join(args.runs, f"losstable-{name}")
        if final_zeroshot(workdir) is not None and name in results:
            continue
        cmd = command(name, workdir, args.steps)
        print("running:", " ".join(cmd[3:]), flush=True)
        start = time.perf_counter()
        with open(workdir + ".log", "w", encoding="utf-8") as log:
            rc = subprocess.call(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        wall = time.perf_counter() - start
        zs = final_zeroshot(workdir)
        if rc != 0 or zs is None:
            print(f"{name}: failed (exit {rc}); see {workdir}.log", flush=True)
            continue
        shown = " ".join(["contrastive-jax", *cmd[3:]]).replace(
            f"--workdir {workdir}", f"--workdir runs/losstable-{name}")
        results[name] = {"command": shown, "wall_s": round(wall, 1), **zs}
        print(json.dumps({name: results[name]}), flush=True)
        with open(results_path, "w", encoding="utf-8") as f:
            json.dump({k: v for k, v in results.items() if k not in BASELINES}, f, indent=1)
    print(render(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
