"""Train-step speed side by side: ours (`bench step`) against open_clip's own model, loss and
optimizer in the same shapes, alternating rounds on one machine. Prints one JSON object.

    python benchmarks/open_clip_step.py --config configs/demo_siglip.py \
        --open-clip-python /tmp/ocvenv/bin/python

The open_clip model is our config's architecture exported with `--format open_clip` (random
weights) and loaded by `open_clip.create_model_from_pretrained('local-dir:DIR')`, so both
sides compute the same towers; its step is open_clip's training step: `model(images, text)`,
`SigLipLoss` (or `ClipLoss` for a softmax config), `backward`, AdamW with our learning rate
and weight decay, at our batch size, in float32, with torch using as many threads as jax's
CPU client sees cores. open_clip runs in its own process (no jax beside torch there): any
Python with `open_clip_torch==3.3.0 torch torchvision transformers sentencepiece`.
Both sides get 3-channel images (the export is RGB). Ours runs as `contrastive-jax bench
step` (its own process, with the CLI's CPU set-up), on `--cpu-devices` jax devices (1 by
default). Times are per step, median over the timed steps of each round; the summary is the
median over rounds.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

import numpy as np

_OPEN_CLIP_SIDE = """
import json, sys, time
import numpy as np, open_clip, torch
out, batch, steps, threads, loss_name, lr, wd = sys.argv[1:8]
batch, steps, threads, lr, wd = int(batch), int(steps), int(threads), float(lr), float(wd)
torch.set_num_threads(threads)
torch.manual_seed(0)
model, _ = open_clip.create_model_from_pretrained("local-dir:" + out)
model.train()
model.output_dict = True  # the dict open_clip's training loop reads
cfg = json.load(open(out + "/open_clip_config.json"))["model_cfg"]
size, length = cfg["vision_cfg"]["image_size"], cfg["text_cfg"]["context_length"]
vocab = cfg["text_cfg"]["vocab_size"]
images = torch.rand(batch, 3, size, size) * 2 - 1
text = torch.randint(3, vocab, (batch, length))
if loss_name.startswith("sigmoid"):
    loss_fn = open_clip.loss.SigLipLoss()
else:
    loss_fn = open_clip.loss.ClipLoss()
opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=wd)
def step():
    out = model(images, text)
    loss = loss_fn(out["image_features"], out["text_features"], out["logit_scale"],
                   *([out["logit_bias"]] if loss_name.startswith("sigmoid") else []))
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
for _ in range(3):
    step()
times = []
for _ in range(steps):
    start = time.perf_counter()
    step()
    times.append(time.perf_counter() - start)
print(json.dumps({"step_ms": float(np.median(times)) * 1e3, "step_ms_best": min(times) * 1e3,
                  "torch": torch.__version__, "open_clip": open_clip.__version__,
                  "threads": torch.get_num_threads()}))
"""


def _export_random(config, out: str) -> None:
    """Our config's model, freshly initialised, written as an open_clip local-dir model."""
    import jax

    from contrastive_jax.data.tokenizer_setup import ensure_tokenizer
    from contrastive_jax.export.open_clip_format import export_open_clip
    from contrastive_jax.models import complete_config
    from contrastive_jax.models.state import ModelDef

    params, _ = ModelDef.init(complete_config(config.model), jax.random.key(0))
    workdir = os.path.join(os.path.dirname(out), "tokenizer")
    os.makedirs(workdir)
    ensure_tokenizer(config.data, workdir)  # trained on the captions unless a path is set
    tokenizer = config.data.tokenizer.path or os.path.join(workdir, "tokenizer.model")
    export_open_clip(config, jax.device_get(params), 0, tokenizer, out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/demo_siglip.py")
    parser.add_argument("--open-clip-python", default=sys.executable)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--cpu-devices", type=int, default=1,
                        help="our side's `bench step --cpu-devices` (jax devices on the CPU)")
    args = parser.parse_args()

    import jax

    from contrastive_jax.config import load_config

    rgb = ["model.image.channels=3", "data.channels=3"]
    config = load_config(args.config, rgb)
    # Ours as users run it: the CLI (its malloc and thread set-up happen before jax starts).
    ours_cmd = [sys.executable, "-m", "contrastive_jax.cli", "bench", "step", "--config",
                args.config, "--steps", str(args.steps), "--cpu-devices", str(args.cpu_devices),
                *[f"--config.{o}" for o in rgb]]
    threads = os.cpu_count() or 1
    ours, theirs, versions = [], [], {}
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "oc")
        _export_random(config, out)
        env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
        for _ in range(args.rounds):
            mine = subprocess.run(ours_cmd, capture_output=True, text=True, env=env)
            if mine.returncode:
                sys.exit(f"bench step failed:\n{mine.stderr[-3000:]}")
            ours.append(json.loads(mine.stdout.strip().splitlines()[-1])["step_ms"])
            run = subprocess.run(
                [args.open_clip_python, "-c", _OPEN_CLIP_SIDE, out,
                 str(config.train.batch_size), str(args.steps), str(threads), config.loss.name,
                 str(config.optimizer.lr), str(config.optimizer.weight_decay)],
                capture_output=True, text=True, env=env)
            if run.returncode:
                sys.exit(f"open_clip's side failed:\n{run.stderr[-3000:]}")
            result = json.loads(run.stdout.strip().splitlines()[-1])
            theirs.append(result.pop("step_ms"))
            versions = {k: v for k, v in result.items() if k != "step_ms_best"}
    ours_ms, theirs_ms = float(np.median(ours)), float(np.median(theirs))
    batch = config.train.batch_size
    print(json.dumps({
        "bench": "open_clip_step", "config": args.config, "global_batch": batch,
        "ours_cpu_devices": args.cpu_devices,
        "loss": config.loss.name, "jax": jax.__version__, **versions,
        "ours_step_ms": [round(t, 1) for t in ours],
        "open_clip_step_ms": [round(t, 1) for t in theirs],
        "ours_examples_per_sec": round(batch / ours_ms * 1e3, 1),
        "open_clip_examples_per_sec": round(batch / theirs_ms * 1e3, 1),
        "speedup": round(theirs_ms / ours_ms, 3)}, sort_keys=True))


if __name__ == "__main__":
    main()
