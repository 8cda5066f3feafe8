"""`contrastive-jax bench ...`: one JSON line per measurement."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from contrastive_jax.cli.common import print_json, simulate_cpu_devices, split_overrides


def _cmd_bench_step(args: argparse.Namespace, extra: Sequence[str]) -> int:
    from contrastive_jax.bench.train_step import bench_step_against_peak
    from contrastive_jax.config import load_config

    if args.cpu_devices:
        from contrastive_jax.cpu_host import set_cpu_devices

        set_cpu_devices(args.cpu_devices)
    config = load_config(args.config, split_overrides(extra))
    for row in bench_step_against_peak(config, args.steps, args.matmul_size):
        print_json(row)
    return 0

def _cmd_bench_data(args: argparse.Namespace, extra: Sequence[str]) -> int:
    from contrastive_jax.bench.data import bench_data
    from contrastive_jax.config import load_config

    config = load_config(args.config, split_overrides(extra))
    for row in bench_data(config, image_size=args.image_size, patch_size=args.patch_size,
                          num_examples=args.num_examples,
                          threads=tuple(args.threads), batches=args.batches,
                          step_steps=args.steps, with_step=not args.no_step,
                          kinds=tuple(args.sources), directory=args.dir):  # fmt: skip
        print_json(row)
    return 0

def _cmd_bench_lit(args: argparse.Namespace, extra: Sequence[str]) -> int:
    from contrastive_jax.bench.lit import bench_lit
    from contrastive_jax.config import load_config

    config = load_config(args.config, split_overrides(extra))
    for result in bench_lit(config, steps=args.steps):
        print_json(result)
    return 0

def _cmd_bench_loss_memory(args: argparse.Namespace, extra: Sequence[str]) -> int:
    simulate_cpu_devices()
    from contrastive_jax.bench.loss_memory import loss_memory_table, model_at_scale

    for row in loss_memory_table(args.losses, args.local_batch, args.devices, args.dim):
        print_json(row)
    print_json(model_at_scale(args.dim))
    return 0

def _cmd_bench_max_batch(args: argparse.Namespace, extra: Sequence[str]) -> int:
    simulate_cpu_devices()
    from contrastive_jax.bench.loss_memory import max_batch

    for variant in args.losses:
        print_json(max_batch(variant, args.memory_gb, args.devices, args.dim))
    return 0

def _cmd_bench_render(args: argparse.Namespace, extra: Sequence[str]) -> int:
    from contrastive_jax.bench.render import bench_render
    from contrastive_jax.config import load_config

    config = load_config(args.config, split_overrides(extra))
    print_json(bench_render(config.data, batch_size=args.batch_size, batches=args.batches))
    return 0


def _cmd_bench_eval(args: argparse.Namespace, extra: Sequence[str]) -> int:
    from contrastive_jax.bench.eval_speed import bench_eval
    from contrastive_jax.config import load_config

    config = load_config(args.config, split_overrides(extra))
    for row in bench_eval(config, batch_size=args.batch_size, batches=args.batches,
                          steps=args.steps):
        print_json(row)
    return 0


def _cmd_bench_recipes(args: argparse.Namespace, extra: Sequence[str]) -> int:
    from contrastive_jax.bench.recipes import recipe_paths, recipe_row
    from contrastive_jax.config import load_config

    for path in args.config or recipe_paths():
        print_json(recipe_row(load_config(path, split_overrides(extra)), path))
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """The bench subcommands."""
    bench = sub.add_parser("bench", help="benchmarks; one JSON line per measurement")
    bench_sub = bench.add_subparsers(dest="bench_command", required=True)
    p = bench_sub.add_parser(
        "step", help="train-step examples/s and MFU on synthetic batches of a config's shapes")
    p.add_argument("--config", required=True, help="configs/NAME.py[:k=v,...]")
    p.add_argument("--steps", type=int, default=20, help="timed steps after compilation")
    p.add_argument("--matmul-size", type=int, default=None,
                   help="side of the matmul (in the model's compute dtype) whose speed is "
                        "the MFU peak; default 2048 on a CPU, 8192 on accelerators")
    p.add_argument("--cpu-devices", type=int, default=None,
                   help="split the CPU into N jax devices (e.g. one per core); the mesh's "
                        "data axis (-1) spans them")
    p.set_defaults(run=_cmd_bench_step)

    p = bench_sub.add_parser(
        "data", help="input pipeline examples/s per core (224 px JPEGs) vs the train step's")
    p.add_argument("--config", default="configs/demo_siglip.py",
                   help="model and data config (images become RGB of --image-size)")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--patch-size", type=int, default=16, help="of the model's image tower")
    p.add_argument("--num-examples", type=int, default=2048, help="synthetic JPEGs written")
    p.add_argument("--threads", type=int, nargs="+", default=[1],
                   help="tf.data thread counts to time (per core = rate / threads)")
    p.add_argument("--batches", type=int, default=8, help="timed pipeline batches")
    p.add_argument("--steps", type=int, default=5, help="timed train steps")
    p.add_argument("--no-step", action="store_true", help="time the pipeline only")
    p.add_argument("--sources", nargs="+", default=["tfrecord"], choices=("tfrecord", "webdataset"),
                   help="source kinds to time (the same JPEGs in TFRecords or tars)")
    p.add_argument("--dir", default=None, help="read the shards from this folder (e.g. "
                   "gs://BUCKET/bench: they are uploaded there first); default a local temp")
    p.set_defaults(run=_cmd_bench_data)

    p = bench_sub.add_parser(
        "lit", help="LiT step time: unlocked vs locked image tower vs cached embeddings")
    p.add_argument("--config", required=True, help="configs/NAME.py[:k=v,...]")
    p.add_argument("--steps", type=int, default=20, help="timed steps after compilation")
    p.set_defaults(run=_cmd_bench_lit)

    from contrastive_jax.bench.variants import LOSS_VARIANT_NAMES

    p = bench_sub.add_parser("loss-memory",
                             help="compiled per-device temp bytes of each loss's gradient")
    p.add_argument("--losses", nargs="+", default=list(LOSS_VARIANT_NAMES),
                   choices=LOSS_VARIANT_NAMES)
    p.add_argument("--local-batch", type=int, nargs="+", default=[256, 1024, 4096])
    p.add_argument("--devices", type=int, nargs="+", default=[1, 2, 4, 8])
    p.add_argument("--dim", type=int, default=512, help="embedding size")
    p.set_defaults(run=_cmd_bench_loss_memory)

    p = bench_sub.add_parser("max-batch",
                             help="largest global batch whose loss gradient fits a budget")
    p.add_argument("--memory-gb", type=float, required=True, help="per-device budget")
    p.add_argument("--losses", nargs="+", default=list(LOSS_VARIANT_NAMES),
                   choices=LOSS_VARIANT_NAMES)
    p.add_argument("--devices", type=int, default=8)
    p.add_argument("--dim", type=int, default=512, help="embedding size")
    p.set_defaults(run=_cmd_bench_max_batch)

    p = bench_sub.add_parser(
        "eval", help="eval forward images/s and texts/s vs the train step's examples/s")
    p.add_argument("--config", default="configs/demo_siglip.py",
                   help="configs/NAME.py[:k=v,...] (the model and its train batch)")
    p.add_argument("--batch-size", type=int, default=None,
                   help="eval batch (default: train.batch_size)")
    p.add_argument("--batches", type=int, default=10, help="timed batches per tower")
    p.add_argument("--steps", type=int, default=10, help="timed train steps")
    p.set_defaults(run=_cmd_bench_eval)

    p = bench_sub.add_parser("render", help="caption rendering (CLIPPO) examples/s per core")
    p.add_argument("--config", default="configs/demo_clippo.py",
                   help="configs/NAME.py[:k=v,...] with data.render settings")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--batches", type=int, default=40, help="timed batches after warm-up")
    p.set_defaults(run=_cmd_bench_render)

    p = bench_sub.add_parser(
        "recipes", help="published recipes: params and GFLOPs per example vs the papers'")
    p.add_argument("--config", action="append", default=[],
                   help="a recipe config (repeatable); default: every configs/recipes/*.py")
    p.set_defaults(run=_cmd_bench_recipes)
