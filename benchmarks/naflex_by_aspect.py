"""Zero-shot top-1 on fashion_mnist_aspect's test canvases by their aspect ratio.

    python3 benchmarks/naflex_by_aspect.py /tmp/demo_squash /tmp/demo_naflex:16 \
        /tmp/demo_naflex:48

Each argument is a model SPEC (workdir, export, hf:DIR), with `:N` for a NaFlex model's
budget of patches. Reads each model's first zeroshot task (demo_naflex's), predicts every
test image exactly as `eval` does (the class embeddings of its prompts; a two-tower's
logits are monotone in the cosine) and prints a markdown table of top-1 per aspect bin
(long side / short side of the canvas, `datasets/fashion_mnist_aspect.canvas_of`).
"""

from __future__ import annotations

import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from contrastive_jax.config.eval_budgets import naflex_patch  # noqa: E402
from contrastive_jax.config.eval_tasks import tasks_of  # noqa: E402
from contrastive_jax.data.labelled import data_config_for, open_labelled  # noqa: E402
from contrastive_jax.datasets.fashion_mnist_aspect import canvas_of  # noqa: E402
from contrastive_jax.evaluate.class_names import task_class_names, task_prompts  # noqa: E402
from contrastive_jax.evaluate.embed import batch_images, encode_images  # noqa: E402
from contrastive_jax.evaluate.zeroshot import classifier_of  # noqa: E402
from contrastive_jax.export.model_spec import load_model  # noqa: E402

BINS = (1.0, 1.5, 2.0, 2.5, 3.01)


def hits(spec: str) -> tuple[np.ndarray, np.ndarray]:
    """(test index, 1 where the top-1 class is right) of every decoded test image."""
    path, _, budget = spec.rpartition(":") if spec.rsplit(":", 1)[-1].isdigit() else (
        spec, "", "")
    model = load_model(path)
    task = next(t for t in tasks_of(model.config) if t["kind"] == "zeroshot")
    images = open_labelled(task["data"], data_config_for(model.config, task["data"]), spec)
    names = task_class_names(task, images, spec)
    classes = classifier_of(model.model_def, model.state, model.text_encoder, names,
                            task_prompts(task), model.config.data.max_len, model.mesh)
    naflex = (naflex_patch(model.config.model), int(budget)) if budget else None
    index, right = [], []
    for batch in images.batches(500, naflex=naflex):
        valid = batch["mask"] > 0
        z = encode_images(model.model_def, model.state, batch_images(batch), model.mesh)
        right.append(np.argmax(z[valid] @ classes.T, axis=-1) == batch["label"][valid])
        index.append(batch["index"][valid])
    return np.concatenate(index), np.concatenate(right)


def main(specs: list[str]) -> None:
    results = [hits(s) for s in specs]
    index = results[0][0]
    aspect = np.array([max(h, w) / min(h, w) for h, w, _, _ in
                       (canvas_of(f"test/{i:06d}") for i in index)])
    print("| aspect (long:short) | images | " + " | ".join(specs) + " |")
    print("|---" * (len(specs) + 2) + "|")
    # 1.0 exactly: a square canvas, which squashing leaves as it is.
    for lo, hi in [(1.0, 1.0 + 1e-9), *zip(BINS[:-1], BINS[1:], strict=True), (1.0, 3.01)]:
        sel = (aspect >= lo) & (aspect < hi)
        label = {(1.0, 3.01): "all", (1.0, 1.0 + 1e-9): "1.0 (square)"}.get(
            (lo, hi), f"{lo:.1f} to {min(hi, 3.0):.1f}")
        cells = []
        for idx, right in results:
            assert (idx == index).all()
            cells.append(f"{right[sel].mean():.4f}")
        print(f"| {label} | {int(sel.sum())} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main(sys.argv[1:])
