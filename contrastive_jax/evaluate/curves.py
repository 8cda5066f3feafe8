"""Training curves from a workdir's `metrics.jsonl`: loss, t, b and each task's headline
metric (and `suite/mean`) against step, one panel each, as one PNG."""

from __future__ import annotations

import io
import json
import math
import re

from contrastive_jax import paths
from contrastive_jax.errors import InputNotFoundError

TRAIN_CURVES = ("train/loss", "train/t", "train/b")
# The headline metric of each task kind (config/eval_tasks.py: HEADLINE), and the suite's mean.
_HEADLINE = re.compile(r"^(zeroshot/[^/]+/top1|retrieval/[^/]+/mean_r1|fewshot/[^/]+/\d+shot"
                       r"|suite/mean)$")


def read_curves(metrics_file: str) -> dict[str, tuple[list[int], list[float]]]:
    """{metric: (steps, values)} of the curves worth plotting, in the file's order (a
    resumed run's repeated steps keep their last value)."""
    if not paths.isfile(metrics_file):
        raise InputNotFoundError(f"no metrics file: {metrics_file}")
    series: dict[str, dict[int, float]] = {}
    with paths.open_file(metrics_file, "r", encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut short by a kill: the rest of the file still plots
            step = row.get("step")
            for key, value in row.items():
                if (key in TRAIN_CURVES or _HEADLINE.match(key)) and isinstance(
                        value, (int, float)) and isinstance(step, int) and math.isfinite(value):
                    series.setdefault(key, {})[step] = float(value)
    ordered = [k for k in TRAIN_CURVES if k in series] + sorted(
        k for k in series if k not in TRAIN_CURVES)
    return {k: (sorted(series[k]), [series[k][s] for s in sorted(series[k])]) for k in ordered}


def save_curves(metrics_file: str, out: str) -> str | None:
    """Writes the curves PNG to `out`; returns its path, or None if nothing was logged."""
    curves = read_curves(metrics_file)
    if not curves:
        return None
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on a training host
    import matplotlib.pyplot as plt

    cols = min(3, len(curves))
    rows = math.ceil(len(curves) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.0 * rows), squeeze=False)
    for ax, (key, (steps, values)) in zip(axes.flat, curves.items(), strict=False):
        ax.plot(steps, values, marker="o" if len(steps) < 20 else None, markersize=3)
        ax.set_title(key, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(curves):]:
        ax.axis("off")
    fig.tight_layout()
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=110)
    plt.close(fig)
    paths.write_bytes(out, png.getvalue())
    return out
