"""Issue 33's done-means run, through the real CLI against a GCS API on loopback.

    python3 tests/gcs_done_means.py [--steps 400] [--scratch DIR]

Starts fake-gcs-server (tests/gcs_emulator.py), writes the corpus (tests/gcs_corpus.py)
to gs://cj-done/data (TFRecord shards by `data build`, webdataset tars) and the same bytes
to a local folder, then:
  1. a local reference run of the demo (tiny towers) for --steps steps, sources local;
  2. the same run with workdir and sources on gs://, killed with SIGKILL as soon as its
     checkpoint at steps/2 is committed, then relaunched to finish;
  3. `eval --model gs://.../workdir` with a zero-shot task on the gs:// tars;
  4. `export --model gs://.../workdir --format hf --out gs://.../hf`.
It checks that the resumed run's train/loss equals the reference at every logged step, and
that the gs:// processes wrote nothing to their working directory or their TMPDIR (both
empty folders of their own) but the caches docs/multihost.md names: $CONTRASTIVE_JAX_CACHE
(TensorBoard events before upload, the export's staging, here the XLA cache too) and, in
TMPDIR, TensorFlow autograph's generated modules and torch's inductor folder. Takes
minutes: a script, not a test (tests/test_gcs_run.py is the short version).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from gcs_corpus import CLASSES, write_corpus  # noqa: E402
from gcs_emulator import GcsEmulator, point_clients_at  # noqa: E402

from contrastive_jax import paths  # noqa: E402

CLI = [sys.executable, "-m", "contrastive_jax.cli"]
DEMO = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                    "configs", "demo_siglip.py")
TINY = ["model.image.depth=1", "model.image.width=32", "model.image.mlp_dim=64",
        "model.image.num_heads=2", "model.text.width=32", "model.text.mlp_dim=64",
        "model.embed_dim=32", "model.text.max_len=16", "data.max_len=16",
        "data.tokenizer.vocab_size=64", "data.channels=1", "train.batch_size=16",
        "train.log_every=10", "train.progress_bar=False", "optimizer.warmup_steps=10"]


def train_command(steps: int, workdir: str, sources: dict[str, str], cache: str) -> list[str]:
    specs = [{"kind": "tfrecord", "pattern": sources["tfrecord"]},
             {"kind": "webdataset", "pattern": sources["wds"]}]
    overrides = [*TINY, f"train.checkpoint_every={steps // 4}", f"data.sources={specs!r}",
                 f"train.compilation_cache_dir={cache}"]
    return [*CLI, "train", "--config", f"{DEMO}:steps={steps}",
            "--workdir", workdir, *[f"--config.{o}" for o in overrides]]


def losses(workdir: str) -> dict[int, float]:
    rows = [json.loads(line) for line in
            paths.read_text(paths.join(workdir, "metrics.jsonl")).splitlines() if line]
    return {r["step"]: r["train/loss"] for r in rows if "train/loss" in r}


def committed(workdir: str, step: int) -> bool:
    return paths.exists(paths.join(workdir, "checkpoints", str(step), "commit_success.txt"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--scratch", default=None, help="local folder for the reference run")
    args = parser.parse_args()
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    scratch = args.scratch or tempfile.mkdtemp(prefix="cj-done-means-")
    emulator = GcsEmulator().start()
    point_clients_at(emulator)
    # The gs:// processes' own empty folders: cwd, TMPDIR; and the one documented cache.
    cwd, tmp = os.path.join(scratch, "cwd"), os.path.join(scratch, "tmpdir")
    cache = os.path.join(scratch, "cache")
    for d in (cwd, tmp, cache):
        os.makedirs(d, exist_ok=True)
    env = {**os.environ, "TMPDIR": tmp, "CONTRASTIVE_JAX_CACHE": cache,
           "PYTHONPATH": repo + os.pathsep + os.environ.get("PYTHONPATH", "")}
    xla_cache = os.path.join(cache, "xla")
    timings = {}
    try:
        bucket = emulator.create_bucket("cj-done")
        t = time.monotonic()
        gcs_sources = write_corpus(f"{bucket}/data", os.path.join(scratch, "staging-gcs"))
        local_sources = write_corpus(os.path.join(scratch, "data"),
                                     os.path.join(scratch, "staging-local"))
        reference = os.path.join(scratch, "reference")
        subprocess.run(train_command(args.steps, reference, local_sources, xla_cache),
                       cwd=repo, env={**os.environ, "PYTHONPATH": env["PYTHONPATH"]},
                       check=True)
        timings["reference_run_s"] = round(time.monotonic() - t, 1)

        workdir, half = f"{bucket}/run1", args.steps // 2
        command = train_command(args.steps, workdir, gcs_sources, xla_cache)
        t = time.monotonic()
        first = subprocess.Popen(command, cwd=cwd, env=env)
        while not committed(workdir, half):
            if first.poll() is not None:
                raise RuntimeError(f"the gs:// run ended (rc {first.returncode}) before "
                                   f"its checkpoint {half}")
            time.sleep(0.5)
        first.send_signal(signal.SIGKILL)
        first.wait()
        killed_at = max(losses(workdir))
        subprocess.run(command, cwd=cwd, env=env, check=True)
        timings["gcs_runs_s"] = round(time.monotonic() - t, 1)

        task = [{"kind": "zeroshot", "name": "gcs_wds",
                 "data": {"kind": "webdataset", "pattern": gcs_sources["wds"]},
                 "classes": list(CLASSES), "prompts": "class_name"}]
        t = time.monotonic()
        out = subprocess.run([*CLI, "eval", "--model", workdir, f"--config.evals.tasks={task!r}"],
                             cwd=cwd, env=env, check=True, stdout=subprocess.PIPE, text=True)
        result = json.loads(out.stdout.strip().splitlines()[-1])
        timings["eval_s"] = round(time.monotonic() - t, 1)
        t = time.monotonic()
        hf = f"{bucket}/hf"
        subprocess.run([*CLI, "export", "--model", workdir, "--format", "hf", "--out", hf],
                       cwd=cwd, env=env, check=True)
        timings["export_s"] = round(time.monotonic() - t, 1)

        ours, theirs = losses(workdir), losses(reference)
        report = {
            "steps": args.steps, "killed_after_step": killed_at,
            "logged_steps": len(theirs), "resumed_equals_reference": ours == theirs,
            "eval": {k: v for k, v in result.items() if "/" in k or k == "step"},
            "export_files": paths.listdir(hf),
            "cwd_after": os.listdir(cwd), "tmpdir_after": sorted(os.listdir(tmp)),
            "cache_after": sorted(os.listdir(cache)), **timings,
        }
        # The temp folder's documented library caches (docs/multihost.md): TensorFlow
        # autograph's generated modules and torch's inductor folder (the hf export).
        others = [f for f in report["tmpdir_after"] if not f.startswith(
            ("__autograph_generated_file", "torchinductor_"))]
        report["tmpdir_undocumented"] = others
        report["tmpdir_after"] = sorted({f[:26] for f in report["tmpdir_after"]})
        print(json.dumps(report, indent=1))
        ok = (ours == theirs and not report["cwd_after"] and not others
              and result.get("step") == args.steps and "config.json" in report["export_files"])
        return 0 if ok else 1
    finally:
        emulator.stop()


if __name__ == "__main__":
    sys.exit(main())
