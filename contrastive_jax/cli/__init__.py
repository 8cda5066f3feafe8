"""`contrastive-jax` command line: train | eval | export | bench | data.

Expected failures (bad config, missing data, a workdir of another model: the project's
`errors.UserError`) end with one line on stderr and exit code 2; `--debug` shows the traceback
instead. Anything else is a bug and keeps its traceback (exit code 1).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
from collections.abc import Sequence

from contrastive_jax.errors import ConfigError, UserError  # imports nothing: no jax, no TF

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # before TensorFlow is imported anywhere
# TensorFlow 2.21 prints its oneDNN notice whatever the level above, which would break the
# one-line errors. oneDNN speeds TF's matmuls and convolutions; the input pipeline has none.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")


def _split_overrides(extra: Sequence[str]) -> list[str]:
    """Collects `--config.a.b=v` (or `--config.a.b v`) into `a.b=v` strings."""
    overrides, items = [], list(extra)
    while items:
        item = items.pop(0)
        if not item.startswith("--config."):
            raise SystemExit(f"error: unrecognised argument {item!r}")
        key = item[len("--config."):]
        if "=" not in key:
            if not items:
                raise SystemExit(f"error: {item} needs a value")
            key = f"{key}={items.pop(0)}"
        overrides.append(key)
    return overrides


def _cmd_train(args: argparse.Namespace, extra: Sequence[str]) -> int:
    from contrastive_jax.config import load_config
    from contrastive_jax.train.loop import train

    config = load_config(args.config, _split_overrides(extra))
    result = train(config, args.workdir)
    print(json.dumps(result, sort_keys=True))
    # Preemption (SIGTERM) is a clean exit for schedulers; Ctrl-C keeps the shell convention.
    return 130 if result.get("interrupted_by") == signal.SIGINT else 0


def _cmd_eval(args: argparse.Namespace, extra: Sequence[str]) -> int:
    overrides = _split_overrides(extra)
    if sum(x is not None for x in (args.workdir, args.export, args.big_vision)) != 1:
        raise ConfigError("eval needs exactly one of --workdir, --export, --big-vision")
    details: dict = {}  # per-class accuracies, confusion matrices: for the report only
    if args.big_vision is not None:
        from contrastive_jax.evaluate.exported import evaluate_big_vision

        if args.config is None or args.tokenizer is None:
            raise ConfigError("--big-vision needs --config (data and evals) and --tokenizer "
                              "(the checkpoint's sentencepiece model)")
        result = evaluate_big_vision(args.big_vision, args.config, args.tokenizer, overrides,
                                     details)
        source, out = args.big_vision, os.path.dirname(os.path.abspath(args.big_vision))
    elif args.export is not None:
        from contrastive_jax.evaluate.exported import evaluate_export

        if args.step is not None:
            raise ConfigError("--step applies to --workdir, not --export")
        result = evaluate_export(args.export, overrides=overrides, details=details)
        source, out = args.export, args.export
    else:
        from contrastive_jax.evaluate.workdir import evaluate_workdir

        result = evaluate_workdir(args.workdir, step=args.step, overrides=overrides,
                                  details=details)
        source, out = args.workdir, args.workdir
    import jax

    from contrastive_jax.evaluate.report import write_report

    if jax.process_index() == 0:  # every process computed the same numbers; one writes
        paths = write_report(args.out or out, result, details, source=source)
        result = {**result, "report": paths["json"]}
    print(json.dumps(result, sort_keys=True))
    return 0


def _cmd_export(args: argparse.Namespace, extra: Sequence[str]) -> int:
    from contrastive_jax.export import export_checkpoint

    out = export_checkpoint(args.checkpoint, args.format, args.out, step=args.step,
                            overwrite=args.overwrite)
    print(json.dumps({"export": out, "format": args.format}))
    return 0


def _cmd_data_tokenizer(args: argparse.Namespace, extra: Sequence[str]) -> int:
    from contrastive_jax.data.tokenizer import train_tokenizer_cli

    path = train_tokenizer_cli(args.input, args.out, args.vocab_size)
    print(json.dumps({"tokenizer": path}))
    return 0


def _cmd_data_prepare(args: argparse.Namespace, extra: Sequence[str]) -> int:
    from contrastive_jax.datasets.fashion_mnist_captions import build_fashion_mnist_captions

    builder = build_fashion_mnist_captions(args.data_dir)
    splits = {name: info.num_examples for name, info in builder.info.splits.items()}
    print(json.dumps({"dataset": builder.name, "data_dir": builder.data_dir, "splits": splits}))
    return 0


def _cmd_data_build(args: argparse.Namespace, extra: Sequence[str]) -> int:
    from contrastive_jax.data.build import build

    result = build(args.input, args.out, prefix=args.prefix,
                   examples_per_shard=args.examples_per_shard, root=args.root,
                   verify_images=not args.no_verify_images)  # fmt: skip
    print(json.dumps(result, sort_keys=True))
    return 0


def _cmd_data_score(args: argparse.Namespace, extra: Sequence[str]) -> int:
    from contrastive_jax.filters.offline import score_split

    _print_json(score_split(args.workdir, args.out, split=args.split, batch_size=args.batch_size,
                            step=args.step, overrides=_split_overrides(extra)))
    return 0


def _cmd_data_dedup(args: argparse.Namespace, extra: Sequence[str]) -> int:
    from contrastive_jax.filters.offline import dedup_split

    _print_json(dedup_split(args.mode, args.out, workdir=args.workdir, config=args.config,
                            split=args.split, eps=args.eps, clusters=args.clusters,
                            batch_size=args.batch_size, step=args.step,
                            overrides=_split_overrides(extra)))
    return 0


def _simulate_cpu_devices(count: int = 8) -> None:
    """Lets multi-device benchmarks run on a CPU: XLA must see the flag before jax starts.
    Harmless with accelerators: jax.devices() then lists those, not the host devices."""
    flags = os.environ.get("XLA_FLAGS", "")
    if "jax" not in sys.modules and "xla_force_host_platform_device_count" not in flags:
        os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={count}"


def _print_json(obj: dict) -> None:
    print(json.dumps(obj), flush=True)


def _cmd_bench_step(args: argparse.Namespace, extra: Sequence[str]) -> int:
    from contrastive_jax.bench.train_step import bench_step_against_peak
    from contrastive_jax.config import load_config

    if args.cpu_devices:
        from contrastive_jax.cpu_host import set_cpu_devices

        set_cpu_devices(args.cpu_devices)
    config = load_config(args.config, _split_overrides(extra))
    for row in bench_step_against_peak(config, args.steps, args.matmul_size):
        _print_json(row)
    return 0


def _cmd_bench_data(args: argparse.Namespace, extra: Sequence[str]) -> int:
    from contrastive_jax.bench.data import bench_data
    from contrastive_jax.config import load_config

    config = load_config(args.config, _split_overrides(extra))
    for row in bench_data(config, image_size=args.image_size, patch_size=args.patch_size,
                          num_examples=args.num_examples,
                          threads=tuple(args.threads), batches=args.batches,
                          step_steps=args.steps, with_step=not args.no_step,
                          kinds=tuple(args.sources)):  # fmt: skip
        _print_json(row)
    return 0


def _cmd_bench_lit(args: argparse.Namespace, extra: Sequence[str]) -> int:
    from contrastive_jax.bench.lit import bench_lit
    from contrastive_jax.config import load_config

    config = load_config(args.config, _split_overrides(extra))
    for result in bench_lit(config, steps=args.steps):
        _print_json(result)
    return 0


def _cmd_bench_loss_memory(args: argparse.Namespace, extra: Sequence[str]) -> int:
    _simulate_cpu_devices()
    from contrastive_jax.bench.loss_memory import loss_memory_table

    for row in loss_memory_table(args.losses, args.local_batch, args.devices, args.dim):
        _print_json(row)
    return 0


def _cmd_bench_max_batch(args: argparse.Namespace, extra: Sequence[str]) -> int:
    _simulate_cpu_devices()
    from contrastive_jax.bench.loss_memory import max_batch

    for variant in args.losses:
        _print_json(max_batch(variant, args.memory_gb, args.devices, args.dim))
    return 0


def _cmd_bench_render(args: argparse.Namespace, extra: Sequence[str]) -> int:
    from contrastive_jax.bench.render import bench_render
    from contrastive_jax.config import load_config

    config = load_config(args.config, _split_overrides(extra))
    _print_json(bench_render(config.data, batch_size=args.batch_size, batches=args.batches))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="contrastive-jax", description=__doc__.splitlines()[0])
    parser.add_argument("--debug", action="store_true", help="show tracebacks of errors")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train or resume a model in a workdir",
                       epilog="Override any config key with --config.a.b=value.")
    p.add_argument("--config", required=True, help="configs/NAME.py[:k=v,...]")
    p.add_argument("--workdir", required=True, help="checkpoints, metrics and logs go here")
    p.set_defaults(run=_cmd_train)

    p = sub.add_parser("eval", help="run a workdir's evaluators on a checkpoint or an export")
    p.add_argument("--workdir", default=None, help="training workdir")
    p.add_argument("--export", default=None, help="directory written by `export` (npz or "
                   "safetensors)")
    p.add_argument("--big-vision", default=None, help="big_vision two_towers .npz checkpoint")
    p.add_argument("--config", default=None, help="with --big-vision: configs/NAME.py[:k=v]")
    p.add_argument("--tokenizer", default=None, help="with --big-vision: sentencepiece model")
    p.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
    p.add_argument("--out", default=None, help="where report.json, report.md and confusion "
                   "PNGs go (default: the workdir / export dir / the .npz's directory)")
    p.set_defaults(run=_cmd_eval)

    p = sub.add_parser("export", help="write a checkpoint's weights for use outside training")
    p.add_argument("--checkpoint", required=True, help="training workdir")
    p.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
    p.add_argument("--format", required=True,
                   help="npz | safetensors | hf (the names of export.FORMATS)")
    p.add_argument("--out", required=True, help="output directory (must not exist)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    p.set_defaults(run=_cmd_export)

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
    p.add_argument("--sources", nargs="+", default=["tfrecord"], choices=("tfrecord", "wds"),
                   help="source kinds to time (the same JPEGs in TFRecords or tars)")
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

    p = bench_sub.add_parser("render", help="caption rendering (CLIPPO) examples/s per core")
    p.add_argument("--config", default="configs/demo_clippo.py",
                   help="configs/NAME.py[:k=v,...] with data.render settings")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--batches", type=int, default=40, help="timed batches after warm-up")
    p.set_defaults(run=_cmd_bench_render)

    data = sub.add_parser("data", help="data tools").add_subparsers(dest="data_command",
                                                                      required=True)
    p = data.add_parser("tokenizer", help="train a sentencepiece model on a caption file")
    p.add_argument("--input", required=True, help="text file, one caption per line")
    p.add_argument("--out", required=True, help="output prefix: writes PREFIX.model")
    p.add_argument("--vocab-size", type=int, default=1000)
    p.set_defaults(run=_cmd_data_tokenizer)

    p = data.add_parser("prepare-demo", help="build the fashion_mnist_captions TFDS dataset")
    p.add_argument("--data-dir", default=None, help="TFDS data_dir (default ~/tensorflow_datasets)")
    p.set_defaults(run=_cmd_data_prepare)

    p = data.add_parser("build", help="convert a CSV/JSONL image table or webdataset tars to "
                        "TFRecord shards (resumable)")
    p.add_argument("--input", required=True,
                   help="a .csv/.tsv/.jsonl table (columns path, caption[, uid, label, score]) "
                        "or webdataset .tar file(s): a glob or a directory")
    p.add_argument("--out", required=True, help="output directory (a rerun resumes there)")
    p.add_argument("--prefix", default="data", help="shard names: PREFIX-00000-of-0000N")
    p.add_argument("--examples-per-shard", type=int, default=10_000, help="tables only")
    p.add_argument("--root", default="", help="image folder of a table (default: its folder)")
    p.add_argument("--no-verify-images", action="store_true",
                   help="do not decode images to drop undecodable ones at build time")
    p.set_defaults(run=_cmd_data_build)

    p = data.add_parser("score", help="write uid -> image-caption cosine under a checkpoint",
                        epilog="Score other data with --config.data.KEY=VALUE overrides.")
    p.add_argument("--workdir", "--checkpoint", dest="workdir", required=True,
                   help="training workdir (model, tokenizer and default data)")
    p.add_argument("--out", required=True, help="score file (.npz: uids, scores)")
    p.add_argument("--split", default=None, help="default: the config's data.train_split")
    p.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
    p.add_argument("--batch-size", type=int, default=512)
    p.set_defaults(run=_cmd_data_score)

    p = data.add_parser("dedup", help="write a keep-list (uids) without duplicates",
                        epilog="Select other data with --config.data.KEY=VALUE overrides.")
    p.add_argument("--mode", required=True, choices=("exact", "semantic"))
    p.add_argument("--out", required=True, help="keep-list: one uid per line")
    p.add_argument("--workdir", "--checkpoint", dest="workdir", default=None,
                   help="training workdir (semantic: its image embeddings)")
    p.add_argument("--config", default=None, help="exact only: configs/NAME.py for the data")
    p.add_argument("--split", default=None, help="default: the config's data.train_split")
    p.add_argument("--eps", type=float, default=0.05,
                   help="semantic: drop items with cosine > 1 - eps to an earlier one")
    p.add_argument("--clusters", type=int, default=10, help="semantic: k-means clusters")
    p.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
    p.add_argument("--batch-size", type=int, default=512)
    p.set_defaults(run=_cmd_data_dedup)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from contrastive_jax import cpu_host

    try:
        if argv is None:  # the command line, not a caller of main()
            cpu_host.restart_with_huge_pages(cli_file=__file__)  # returns unless it restarts
        cpu_host.tune_before_jax()
    except UserError as e:  # a bad CONTRASTIVE_JAX_CPU_MALLOC value
        print(f"error: {e}", file=sys.stderr)
        return 2
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    takes_overrides = args.command in ("train", "eval", "bench") or (
        args.command == "data" and args.data_command in ("score", "dedup"))
    if extra and not takes_overrides:
        parser.error(f"unrecognised arguments: {' '.join(extra)}")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("absl", "jax._src", "orbax", "tensorflow"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        return args.run(args, extra)
    except Exception as e:  # noqa: BLE001 - only the project's own error type is one line
        if args.debug or not isinstance(e, UserError):
            raise  # a bug: keep its traceback (exit 1)
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
