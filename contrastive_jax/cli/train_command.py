"""`contrastive-jax train`."""

from __future__ import annotations

import argparse
import json
import signal
from collections.abc import Sequence

from contrastive_jax.cli.common import split_overrides


def _cmd_train(args: argparse.Namespace, extra: Sequence[str]) -> int:
    from contrastive_jax.config import load_config

    # The config first: a typo in it is a one-line error before jax and TensorFlow load
    # (seconds on a small host).
    config = load_config(args.config, split_overrides(extra))
    from contrastive_jax.train.loop import train

    result = train(config, args.workdir)
    print(json.dumps(result, sort_keys=True))
    # Preemption (SIGTERM) is a clean exit for schedulers; Ctrl-C keeps the shell convention.
    return 130 if result.get("interrupted_by") == signal.SIGINT else 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """The train subcommand."""
    p = sub.add_parser("train", help="train or resume a model in a workdir",
                       epilog="Override any config key with --config.a.b=value.")
    p.add_argument("--config", required=True, help="configs/NAME.py[:k=v,...]")
    p.add_argument("--workdir", required=True, help="checkpoints, metrics and logs go here")
    p.set_defaults(run=_cmd_train)
