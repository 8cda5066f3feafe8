"""End-to-end images/s of a config's zero-shot tasks (read, decode, resize, sharded forward,
top-k), on a freshly initialised model of the config: what an eval step costs, beside
`contrastive-jax bench eval` (the forward alone). Prints one JSON object per task and batch.

    python benchmarks/zeroshot_task_speed.py --config configs/demo_siglip.py
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import tempfile
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/demo_siglip.py")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[500, 1000])
    args = parser.parse_args()

    from contrastive_jax.config import eval_tasks, load_config
    from contrastive_jax.data.tokenizer import Tokenizer, train_tokenizer
    from contrastive_jax.data.tokenizer_setup import training_captions
    from contrastive_jax.evaluate import runner
    from contrastive_jax.models.state import ModelDef
    from contrastive_jax.parallel.mesh import create_mesh
    from contrastive_jax.train.init_state import create_train_state
    from contrastive_jax.train.optimizer import create_optimizer

    config = load_config(args.config)
    with tempfile.TemporaryDirectory() as tmp:
        captions = itertools.islice(training_captions(config.data), 20_000)
        tokenizer = Tokenizer(train_tokenizer(captions, os.path.join(tmp, "spm"),
                                              vocab_size=config.model.text.vocab_size))
    mesh = create_mesh(config.mesh)
    state, _ = create_train_state(config, create_optimizer(config.optimizer,
                                                           config.train.steps)[0], mesh)
    model_def = ModelDef(config.model)
    for task in eval_tasks.tasks_of(config):
        if task["kind"] != "zeroshot":
            continue
        for batch_size in args.batch_sizes:
            task = {**task, "batch_size": batch_size}
            runner.run_zeroshot_task(task, config, model_def, state, tokenizer, mesh)  # compiles
            start = time.perf_counter()
            result = runner.run_zeroshot_task(task, config, model_def, state, tokenizer, mesh)
            seconds = time.perf_counter() - start
            count = len(runner.open_labelled(task["data"], runner.data_config_for(
                config, task["data"]), "count"))
            print(json.dumps({"bench": "zeroshot_task", "task": task["name"], "images": count,
                              "batch": batch_size, "devices": mesh.size,
                              "seconds": round(seconds, 2),
                              "images_per_sec": round(count / seconds, 1),
                              "top1_untrained": round(result[f"zeroshot/{task['name']}/top1"],
                                                      4)}), flush=True)


if __name__ == "__main__":
    main()
