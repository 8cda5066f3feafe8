"""Zero-shot top-1 of a trained model, ours against its exports run through each library's
natural call path, on the run's first zero-shot task. Prints one JSON object.

    python benchmarks/hf_parity.py --workdir /tmp/demo_siglip --hf /tmp/siglip_hf
    python benchmarks/hf_parity.py --workdir /tmp/demo_clip --hf /tmp/clip_hf \
        --open-clip /tmp/clip_oc

- ours: `contrastive-jax eval`'s zero-shot (prompt ensemble);
- transformers: `model(**processor(text=prompts, images=PIL images, padding="max_length"))`,
  the same ensemble averaged from its text embeddings;
- the pipeline: `pipeline("zero-shot-image-classification")` with the task's first template
  as `hypothesis_template`, against ours with that one template;
- open_clip: `create_model_from_pretrained` / `get_tokenizer` / its preprocess, ensemble, in
  a process of its own (no jax beside torch there), by `--open-clip-python` (default: this
  one), e.g. a venv with `pip install open_clip_torch==3.3.0 torch==2.14.1 torchvision==0.29.1
  transformers sentencepiece`.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np


def _ensemble(text_embeds: np.ndarray, num_classes: int) -> np.ndarray:
    emb = text_embeds.reshape(num_classes, -1, text_embeds.shape[-1]).mean(axis=1)
    return emb / np.linalg.norm(emb, axis=-1, keepdims=True)


# open_clip's side: its loaders, its preprocess on PIL images, the prompt ensemble.
_OPEN_CLIP_SIDE = """
import json, sys
import numpy as np, open_clip, torch
from PIL import Image
out, data, batch = sys.argv[1], np.load(sys.argv[2]), int(sys.argv[3])
prompts, num_classes = json.loads(sys.argv[4]), int(sys.argv[5])
model, preprocess = open_clip.create_model_from_pretrained("local-dir:" + out)
tokenizer = open_clip.get_tokenizer("local-dir:" + out)
model.eval()
pils = [Image.fromarray(p[..., 0] if p.shape[-1] == 1 else p) for p in data["pixels"]]
with torch.no_grad():
    text = model.encode_text(tokenizer(prompts), normalize=True).numpy()
    cls = text.reshape(num_classes, -1, text.shape[-1]).mean(axis=1)
    cls /= np.linalg.norm(cls, axis=-1, keepdims=True)
    preds = [np.argmax(model.encode_image(torch.stack([preprocess(p) for p in
             pils[i:i + batch]]), normalize=True).numpy() @ cls.T, 1)
             for i in range(0, len(pils), batch)]
print(json.dumps(float(np.mean(np.concatenate(preds) == data["labels"]))))
"""


def _open_clip_top1(args, pils, prompts, num_classes: int, labels: np.ndarray) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        data = os.path.join(tmp, "data.npz")
        np.savez(data, pixels=np.stack([np.asarray(p) for p in pils]), labels=labels)
        env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
        out = subprocess.run([args.open_clip_python, "-c", _OPEN_CLIP_SIDE, args.open_clip, data,
                              str(args.batch_size), json.dumps(prompts), str(num_classes)],
                             check=True, capture_output=True, text=True, env=env)
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--hf", default=None, help="export --format hf directory")
    parser.add_argument("--open-clip", default=None, help="export --format open_clip directory")
    parser.add_argument("--open-clip-python", default=sys.executable,
                        help="a Python with open_clip installed")
    parser.add_argument("--num", type=int, default=0, help="test images (0: all)")
    parser.add_argument("--batch-size", type=int, default=500)
    args = parser.parse_args()

    import jax
    import torch
    from PIL import Image

    from contrastive_jax.config.eval_tasks import tasks_of
    from contrastive_jax.data.labelled import data_config_for, open_labelled
    from contrastive_jax.evaluate.class_names import task_class_names, task_prompts
    from contrastive_jax.evaluate.prompts import fill
    from contrastive_jax.export.model_spec import load_model

    loaded = load_model(args.workdir)
    config = loaded.config
    task = next(t for t in tasks_of(config) if t["kind"] == "zeroshot")
    data_config = data_config_for(config, task["data"])
    lo, hi = data_config.value_range
    data_config.value_range = (0.0, 255.0)  # raw pixels, for the libraries' processors
    images = open_labelled(task["data"], data_config, "parity")
    names = task_class_names(task, images, "parity")
    templates = task_prompts(task)
    prompts = [fill(t, n) for n in names for t in templates]
    model = loaded.model_def.bind(jax.device_get(loaded.state.params))
    tokens = loaded.text_encoder.encode_batch(prompts, config.data.max_len)
    ours_cls = _ensemble(np.asarray(model.encode_text(tokens)), len(names))
    first = _ensemble(np.asarray(model.encode_text(loaded.text_encoder.encode_batch(
        [fill(templates[0], n) for n in names], config.data.max_len))), len(names))
    labels, batches, zimg = [], [], []
    for batch in images.batches(args.batch_size):
        keep = batch["mask"].astype(bool)
        pixels = np.rint(batch["image"][keep]).astype(np.uint8)
        labels.append(batch["label"][keep])
        batches.append(pixels)
        zimg.append(np.asarray(model.encode_image(
            lo + pixels.astype(np.float32) / 255.0 * (hi - lo))))
        if args.num and sum(len(x) for x in labels) >= args.num:
            break
    labels, zimg = np.concatenate(labels)[:args.num or None], np.concatenate(zimg)
    zimg = zimg[:len(labels)]
    pils = [Image.fromarray(p[..., 0] if p.shape[-1] == 1 else p)
            for b in batches for p in b][:len(labels)]
    top1 = {"ours": float(np.mean(np.argmax(zimg @ ours_cls.T, 1) == labels)),
            "ours_first_template": float(np.mean(np.argmax(zimg @ first.T, 1) == labels))}
    timings = {}
    if args.hf:
        from transformers import AutoModel, AutoProcessor, pipeline

        hf, processor = AutoModel.from_pretrained(args.hf).eval(), AutoProcessor.from_pretrained(
            args.hf)
        start, preds = time.time(), []
        with torch.no_grad():
            for i in range(0, len(pils), args.batch_size):
                out = hf(**processor(text=prompts, images=pils[i:i + args.batch_size],
                                     padding="max_length", truncation=True,
                                     return_tensors="pt"))
                cls = _ensemble(out.text_embeds.numpy(), len(names))
                preds.append(np.argmax(out.image_embeds.numpy() @ cls.T, 1))
        top1["transformers"] = float(np.mean(np.concatenate(preds) == labels))
        timings["transformers_s"] = round(time.time() - start, 1)
        classifier = pipeline("zero-shot-image-classification", model=args.hf)
        start = time.time()
        results = classifier(pils, candidate_labels=names, hypothesis_template=templates[0])
        picked = np.array([names.index(r[0]["label"]) for r in results])
        top1["pipeline_first_template"] = float(np.mean(picked == labels))
        timings["pipeline_s"] = round(time.time() - start, 1)
    if args.open_clip:
        start = time.time()
        top1["open_clip"] = _open_clip_top1(args, pils, prompts, len(names), labels)
        timings["open_clip_s"] = round(time.time() - start, 1)
    print(json.dumps({"workdir": args.workdir, "step": loaded.step, "task": task["name"],
                      "images": int(len(labels)), "templates": len(templates),
                      "top1": top1, "seconds": timings}, sort_keys=True))


if __name__ == "__main__":
    main()
