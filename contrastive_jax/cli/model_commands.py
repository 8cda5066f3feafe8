"""Commands that read a model: `eval`, `embed`, `export`, `plot`.

`eval`, `embed` and `export` take a model SPEC with `--model` (`export.model_spec`): a
training workdir, a native export directory, `hf:DIR`, `open_clip:DIR` or
`big_vision:FILE.npz`.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence

from contrastive_jax import paths as storage  # `paths`: eval's report files
from contrastive_jax.cli.common import split_overrides
from contrastive_jax.errors import ConfigError


def _load(args: argparse.Namespace, extra: Sequence[str]):
    from contrastive_jax.export.model_spec import load_model

    return load_model(args.model, step=args.step, tokenizer=args.tokenizer, config=args.config,
                      overrides=split_overrides(extra))


def _missing_data(args: argparse.Namespace, extra: Sequence[str]) -> dict[str, str]:
    """Every task whose data is not there, found before the model loads: an error naming
    them all, or with --skip-missing, the tasks to leave out. No task at all is an error
    too (an import carries none)."""
    from contrastive_jax.config.eval_tasks import tasks_of
    from contrastive_jax.errors import InputNotFoundError
    from contrastive_jax.evaluate.data_ready import missing_data
    from contrastive_jax.export.model_spec import eval_config

    config = eval_config(args.model, config=args.config, overrides=split_overrides(extra))
    if not tasks_of(config):
        raise ConfigError(f"model {args.model!r} has no eval tasks: give a suite with "
                          "--config FILE.py or tasks with --config.evals.tasks='[{...}]'")
    missing = missing_data(config)
    if missing and not args.skip_missing:
        raise InputNotFoundError(
            f"{len(missing)} eval task(s) have no data: "
            + "; ".join(f"{task}: {why}" for task, why in missing.items())
            + " (--skip-missing evaluates the other tasks)")
    return missing


def _cmd_eval(args: argparse.Namespace, extra: Sequence[str]) -> int:
    missing = _missing_data(args, extra)
    model = _load(args, extra)
    import jax

    from contrastive_jax.evaluate.data_ready import without_tasks
    from contrastive_jax.evaluate.model_eval import evaluate_loaded
    from contrastive_jax.evaluate.report import write_report

    without_tasks(model.config, set(missing))
    if args.max_num_patches:
        from contrastive_jax.config.eval_budgets import set_budgets

        set_budgets(model.config, args.max_num_patches)
    details: dict = {"missing_data": missing}  # per-class accuracies, ...: the report only
    result = evaluate_loaded(model, details)
    if jax.process_index() == 0:  # every process computed the same numbers; one writes
        paths = write_report(args.out or model.home, result, details, source=model.source,
                             metrics_file=storage.join(model.home, "metrics.jsonl"))
        result = {**result, "report": paths["json"]}
    if missing:
        result["skipped_missing_data"] = sorted(missing)
    print(json.dumps(result, sort_keys=True))
    return 0


def _cmd_embed(args: argparse.Namespace, extra: Sequence[str]) -> int:
    if (args.images is None) == (args.texts is None):
        raise ConfigError("embed needs exactly one of --images and --texts")
    if args.max_num_patches and args.texts is not None:
        raise ConfigError("--max-num-patches is a budget for images: give it with --images")
    model = _load(args, extra)
    from contrastive_jax.evaluate.embed_files import embed_images_of, embed_texts_of

    if args.images is not None:
        result = embed_images_of(model, args.images, args.out, args.batch_size,
                                 args.max_num_patches)
    else:
        result = embed_texts_of(model, args.texts, args.out, args.batch_size)
    print(json.dumps(result, sort_keys=True))
    return 0


def _cmd_export(args: argparse.Namespace, extra: Sequence[str]) -> int:
    from contrastive_jax.export import export_checkpoint

    out = export_checkpoint(args.model, args.format, args.out, step=args.step,
                            overwrite=args.overwrite)
    print(json.dumps({"export": out, "format": args.format}))
    return 0


def _cmd_plot(args: argparse.Namespace, extra: Sequence[str]) -> int:
    from contrastive_jax.evaluate.curves import save_curves

    out = args.out or storage.join(args.workdir, "curves.png")
    print(json.dumps({"plot": save_curves(storage.join(args.workdir, "metrics.jsonl"), out)}))
    return 0


def _model_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="SPEC: a training workdir, an export "
                   "directory, hf:DIR, open_clip:DIR or big_vision:FILE.npz")
    p.add_argument("--step", type=int, default=None, help="a workdir's checkpoint step "
                   "(default: latest)")
    p.add_argument("--tokenizer", default=None, help="big_vision: the sentencepiece model")
    p.add_argument("--config", default=None, help="configs/NAME.py[:k=v]: its evals (the "
                   "suite) replace the model's own; for big_vision also its data settings")
    p.add_argument("--max-num-patches", type=int, nargs="+", default=None, metavar="N",
                   help="NaFlex models: image budgets in patches, images at their own aspect "
                   "ratio; a result per budget (eval: overrides the tasks' max_num_patches; "
                   "default: the position table's size). Give it after any --config.KEY=VALUE "
                   "that holds spaces, which argparse would read as one more N")


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """The subcommands that read a model."""
    p = sub.add_parser("eval", help="run evaluation tasks on a model; one JSON line",
                       epilog="Override any config key with --config.a.b=value, e.g. "
                              "--config.evals.tasks='[{...}]'.")
    _model_arguments(p)
    p.add_argument("--out", default=None, help="where report.json, report.md and the PNGs "
                   "go (default: the workdir / export dir / the .npz's directory)")
    p.add_argument("--skip-missing", action="store_true", help="run the tasks whose data is "
                   "there and list the others in the report (default: name them all and stop)")
    p.set_defaults(run=_cmd_eval)

    p = sub.add_parser("embed", help="L2-normalised embeddings of images or texts as .npy")
    _model_arguments(p)
    p.add_argument("--images", default=None, help="a folder (searched recursively) or a glob")
    p.add_argument("--texts", default=None, help="a text file, one input per line")
    p.add_argument("--out", required=True, help="X.npy; the inputs in row order go to X.txt")
    p.add_argument("--batch-size", type=int, default=256)
    p.set_defaults(run=_cmd_embed)

    p = sub.add_parser("export", help="write a checkpoint's weights for use outside training")
    p.add_argument("--model", required=True,
                   help="SPEC: a training workdir, or any other (hf:DIR, open_clip:DIR, ...)")
    p.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
    p.add_argument("--format", required=True,
                   help="npz | safetensors | hf | open_clip (the names of export.FORMATS)")
    p.add_argument("--out", required=True, help="output directory (must not exist)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    p.set_defaults(run=_cmd_export)

    p = sub.add_parser("plot", help="training curves of a workdir's metrics.jsonl as a PNG")
    p.add_argument("workdir", help="training workdir")
    p.add_argument("--out", default=None, help="PNG path (default: WORKDIR/curves.png)")
    p.set_defaults(run=_cmd_plot)
