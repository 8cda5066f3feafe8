"""The eval report: report.json, report.md (a table of the tasks, then the details), one
confusion-matrix PNG per zero-shot task and, for a workdir, its training curves."""

from __future__ import annotations

import json
import re
from typing import Any

from contrastive_jax import paths as storage  # `paths`: the report's files
from contrastive_jax.evaluate.confusion_png import save_confusion_png
from contrastive_jax.evaluate.curves import save_curves

REPORT_JSON, REPORT_MD, CURVES_PNG = "report.json", "report.md", "curves.png"


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def report_metrics(metrics: dict[str, float], details: dict[str, Any]) -> dict[str, float]:
    """The scalar metrics plus `zeroshot/<name>/per_class/<class>` accuracies."""
    out = dict(metrics)
    for name, zs in details.get("zeroshot", {}).items():
        for cls, acc in zs["per_class"].items():
            out[f"zeroshot/{name}/per_class/{cls}"] = acc
    return out


def _task_table(report: dict[str, Any]) -> list[str]:
    """One row per task with a headline metric, then the suite's mean."""
    tasks = [t for t in report.get("tasks") or [] if t["metric"] is not None]
    if not tasks:
        return []
    lines = ["| task | kind | headline | value |", "|---|---|---|---|"]
    for t in tasks:
        value = "n/a" if t["headline"] is None else f"{t['headline']:.4f}"
        lines.append(f"| {t['name']} | {t['kind']} | {t['metric'].rsplit('/', 1)[-1]} | "
                     f"{value} |")
    mean = report["metrics"].get("suite/mean")
    if mean is not None:
        lines.append(f"| **mean** | | | **{mean:.4f}** |")
    return [*lines, ""]


def _markdown(report: dict[str, Any]) -> str:
    lines = [f"# Evaluation report (step {report.get('step', '?')})", "",
             f"Source: `{report.get('source', '')}`", "", *_task_table(report)]
    if report.get("curves_png"):
        lines += [f"![training curves]({report['curves_png']})", ""]
    lines += ["## All metrics", "", "| metric | value |", "|---|---|"]
    lines += [f"| {k} | {v:.4f} |" for k, v in sorted(report["metrics"].items())
              if "/per_class/" not in k]
    for name, zs in report.get("zeroshot", {}).items():
        lines += ["", f"## Zero-shot {name}: per-class top-1 ({zs['count']} images)", "",
                  "| class | top-1 |", "|---|---|"]
        lines += [f"| {c} | {a:.4f} |" for c, a in zs["per_class"].items()]
        lines += ["", f"![confusion matrix]({zs['confusion_png']})"]
    for name, fs in report.get("fewshot", {}).items():
        lines += ["", f"## Few-shot {name}", "", "| shots | mean | per seed |", "|---|---|---|"]
        lines += [f"| {k} | {v['mean']:.4f} | {', '.join(f'{a:.4f}' for a in v['per_seed'])} |"
                  for k, v in fs.items()]
    if report.get("missing_data"):
        lines += ["", "## Not run: no data", "", "| task | why |", "|---|---|"]
        lines += [f"| {k} | {v} |" for k, v in sorted(report["missing_data"].items())]
    return "\n".join(lines) + "\n"


def write_report(out_dir: str, result: dict[str, Any], details: dict[str, Any],
                 source: str = "", metrics_file: str | None = None) -> dict[str, str]:
    """Writes the report files into `out_dir` (created if needed); returns their paths.
    `metrics_file`: a workdir's metrics.jsonl, plotted as the training curves if it exists."""
    storage.makedirs(out_dir)
    metrics = {k: v for k, v in result.items() if k != "step"}
    report: dict[str, Any] = {"step": result.get("step"), "source": source,
                              "metrics": report_metrics(metrics, details),
                              "tasks": details.get("tasks", [])}
    paths = {}
    if metrics_file and storage.isfile(metrics_file):
        curves = save_curves(metrics_file, storage.join(out_dir, CURVES_PNG))
        if curves:
            paths["curves"], report["curves_png"] = curves, CURVES_PNG
    for name, zs in details.get("zeroshot", {}).items():
        png = f"confusion_{_safe(name)}.png"
        paths[f"confusion/{name}"] = save_confusion_png(
            storage.join(out_dir, png), zs["confusion"], zs["class_names"],
            title=f"zero-shot {name}, step {result.get('step', '?')}")
        report.setdefault("zeroshot", {})[name] = {**zs, "confusion_png": png}
    if details.get("fewshot"):
        report["fewshot"] = details["fewshot"]
    if details.get("missing_data"):  # eval --skip-missing: task -> why it did not run
        report["missing_data"] = details["missing_data"]
    paths["json"] = storage.join(out_dir, REPORT_JSON)
    storage.write_text(paths["json"], json.dumps(report, indent=2, sort_keys=True))
    paths["markdown"] = storage.join(out_dir, REPORT_MD)
    storage.write_text(paths["markdown"], _markdown(report))
    return paths
