"""Max abs difference between our model and its `export --format hf` directory, on real
test images and prompts. Prints one JSON object.

    python benchmarks/hf_parity.py --workdir /tmp/demo_clip_hf --export /tmp/clip_hf
"""

from __future__ import annotations

import argparse
import json

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--export", required=True, help="directory written by export --format hf")
    parser.add_argument("--num", type=int, default=32, help="test images and prompts")
    args = parser.parse_args()

    import torch
    import transformers

    from contrastive_jax.data.labelled import split_of
    from contrastive_jax.data.tokenizer import Tokenizer
    from contrastive_jax.datasets.catalogue import class_names
    from contrastive_jax.models import complete_config
    from contrastive_jax.train.checkpoint import restore_params
    from contrastive_jax.train.state import ModelDef
    from contrastive_jax.workdir_config import load_workdir_config

    config = load_workdir_config(args.workdir)
    _, params, step = restore_params(args.workdir)
    model = ModelDef(complete_config(config.model)).bind(params)
    batch = next(split_of(config.data, "test").batches(args.num))
    names = class_names(config.data.dataset, config.data.data_dir)
    texts = [f"a photo of a {names[int(label)]}." for label in batch["label"]]
    tokens = Tokenizer(f"{args.workdir}/tokenizer.model").encode_batch(texts, config.data.max_len)
    zimg, ztxt = (np.asarray(z) for z in model(batch["image"], tokens))
    logits = ztxt @ zimg.T * float(model.temperature()) + float(model.bias())

    with open(f"{args.export}/config.json", encoding="utf-8") as f:
        card = json.load(f)
    hf_class = getattr(transformers, card["architectures"][0])
    hf_model = hf_class.from_pretrained(args.export).eval()
    with torch.no_grad():
        out = hf_model(input_ids=torch.from_numpy(tokens.astype(np.int64)),
                       pixel_values=torch.from_numpy(batch["image"].transpose(0, 3, 1, 2)))
    diffs = {name: float(np.max(np.abs(ours - theirs.numpy()))) for name, ours, theirs in (
        ("image_embeds", zimg, out.image_embeds), ("text_embeds", ztxt, out.text_embeds),
        ("logits_per_text", logits, out.logits_per_text))}
    print(json.dumps({"hf_class": hf_class.__name__, "step": step, "num": args.num,
                      "max_abs_diff": diffs}))


if __name__ == "__main__":
    main()
