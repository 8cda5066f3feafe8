"""CLIP-score filter proof on a corpus with 30% of captions shuffled; prints JSON lines.

    python3 tools/clip_score_proof.py --demo-workdir /work/runs/demo_siglip_for_filters \
        --out /work/runs/filters_proof [--steps 400]

1. Uses (or trains) a demo model: configs/demo_siglip.py in --demo-workdir.
2. Builds fashion_mnist_captions_noisy: NOISY_FRACTION of train captions shuffled across
   examples; the truth per uid is caption_label != label.
3. `data score` of that split with the demo checkpoint.
4. The rule, fixed before looking at the truth: keep the top 70% of scores (the known
   shuffle rate is 30%). Reports the fraction of wrong pairs removed and right pairs kept.
5. Trains the same short run (--steps) on the unfiltered and the filtered corpus and
   reports both zero-shot top-1 accuracies. Finished workdirs are reused.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from contrastive_jax.config import load_config  # noqa: E402
from contrastive_jax.curation.offline import score_split  # noqa: E402
from contrastive_jax.data.filters.uid_tables import read_scores, score_threshold  # noqa: E402
from contrastive_jax.datasets.catalogue import get_builder  # noqa: E402
from contrastive_jax.evaluate.model_eval import evaluate_model  # noqa: E402
from contrastive_jax.train.loop import train  # noqa: E402

NOISY = "fashion_mnist_captions_noisy"
TOP_FRACTION = 0.7
KEY = "zeroshot/fashion_mnist/top1"
CONFIG = os.path.join(os.path.dirname(__file__), "..", "configs", "demo_siglip.py")


def truth(data_dir: str | None) -> dict[str, bool]:
    """uid -> True where the pair is wrong (the caption names another class)."""
    ds = get_builder(NOISY, data_dir).as_dataset(split="train", shuffle_files=False)
    ds = ds.map(lambda ex: (ex["uid"], ex["caption_label"] != ex["label"]))
    return {uid.decode(): bool(wrong) for uid, wrong in ds.batch(4096).unbatch()
            .as_numpy_iterator()}


def finished(workdir: str, steps: int) -> float | None:
    """The final zero-shot top-1 of a workdir that already ran `steps` steps, else None."""
    path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.exists(path):
        return None
    with open(path, encoding="utf-8") as f:
        records = [json.loads(line) for line in f]
    done = [r for r in records if r["step"] == steps and KEY in r]
    if done:
        return done[-1][KEY]
    if any(r["step"] == steps for r in records):  # trained, but the final eval is missing
        return evaluate_model(workdir, step=steps)[KEY]
    return None


def run(config_args: str, workdir: str, overrides: list[str]) -> dict:
    config = load_config(f"{CONFIG}:{config_args}",
                         ["train.progress_bar=False", f"data.dataset={NOISY}", *overrides])
    return train(config, workdir)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--demo-workdir", required=True)
    parser.add_argument("--out", required=True, help="score file and proof workdirs go here")
    parser.add_argument("--steps", type=int, default=400, help="steps of the short runs")
    parser.add_argument("--demo-step", type=int, default=None,
                        help="checkpoint step of the demo run (default: latest)")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--skip-training", action="store_true", help="steps 1-4 only")
    args = parser.parse_args()
    data = [f"data.data_dir={args.data_dir}"] if args.data_dir else []

    if not os.path.exists(os.path.join(args.demo_workdir, "checkpoints")):
        load = load_config(CONFIG, ["train.progress_bar=False", *data])
        train(load, args.demo_workdir)
    tag = args.demo_step if args.demo_step is not None else "latest"
    scores_path = os.path.join(args.out, f"scores_{tag}.npz")
    if not os.path.exists(scores_path):
        print(json.dumps(score_split(args.demo_workdir, scores_path, step=args.demo_step,
                                     overrides=[f"data.dataset={NOISY}", *data])), flush=True)
    uids, scores = read_scores(scores_path)
    cut = score_threshold(scores, None, TOP_FRACTION)
    wrong = truth(args.data_dir)
    kept = {u for u, s in zip(uids.tolist(), scores, strict=True) if s >= cut}
    n_wrong = sum(wrong.values())
    removed_wrong = sum(1 for u, w in wrong.items() if w and u not in kept)
    kept_right = sum(1 for u, w in wrong.items() if not w and u in kept)
    print(json.dumps({
        "demo_step": tag, "rule": f"top_fraction={TOP_FRACTION}", "threshold": cut,
        "examples": len(wrong),
        "wrong_pairs": n_wrong, "wrong_removed_fraction": removed_wrong / n_wrong,
        "right_kept_fraction": kept_right / (len(wrong) - n_wrong),
    }), flush=True)
    if args.skip_training:
        return
    results = {}
    for name, extra in (("unfiltered", []), (f"filtered_{tag}", [
            "data.filters.score.enabled=True", f"data.filters.score.path={scores_path}",
            f"data.filters.score.top_fraction={TOP_FRACTION}"])):
        workdir = os.path.join(args.out, name)
        top1 = finished(workdir, args.steps)
        if top1 is None:
            top1 = run(f"steps={args.steps}", workdir, [*data, *extra])[KEY]
        results[name] = top1
    print(json.dumps({"steps": args.steps, "demo_step": tag,
                      "zeroshot_top1_unfiltered": results["unfiltered"],
                      "zeroshot_top1_filtered": results[f"filtered_{tag}"]}), flush=True)


if __name__ == "__main__":
    main()
