"""`contrastive-jax` command line: train | eval | embed | export | plot | bench | data | plan.

Expected failures (bad config, missing data, a workdir of another model: the project's
`errors.UserError`) end with one line on stderr and exit code 2; `--debug` shows the traceback
instead. Anything else is a bug and keeps its traceback (exit code 1).

The top layer: it may import every other package, and none imports it (docs/architecture.md).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

# None of these imports jax or TensorFlow: commands import what they need when they run.
from contrastive_jax.cli import (
    bench_commands,
    data_commands,
    model_commands,
    plan_command,
    train_command,
)
from contrastive_jax.cli.common import quiet_libtpu_without_tpu
from contrastive_jax.errors import UserError

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # before TensorFlow is imported anywhere
# TensorFlow 2.21 prints its oneDNN notice whatever the level above, which would break the
# one-line errors. oneDNN speeds TF's matmuls and convolutions; the input pipeline has none.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="contrastive-jax", description=__doc__.splitlines()[0])
    parser.add_argument("--debug", action="store_true", help="show tracebacks of errors")
    sub = parser.add_subparsers(dest="command", required=True)

    for commands in (train_command, model_commands, bench_commands, data_commands,
                     plan_command):
        commands.add_parsers(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from contrastive_jax import cpu_host

    try:
        if argv is None:  # the command line, not a caller of main()
            cpu_host.restart_with_huge_pages(  # returns unless it restarts
                cli_file=os.path.join(os.path.dirname(__file__), "__main__.py"))
        cpu_host.tune_before_jax()
    except UserError as e:  # a bad CONTRASTIVE_JAX_CPU_MALLOC value
        print(f"error: {e}", file=sys.stderr)
        return 2
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if args.command != "plan":  # plan names its own target to libtpu
        quiet_libtpu_without_tpu()
    takes_overrides = args.command in ("train", "eval", "embed", "bench", "plan") or (
        args.command == "data" and args.data_command in ("score", "dedup", "synsets", "cat"))
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

