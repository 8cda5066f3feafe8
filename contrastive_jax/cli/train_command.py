"""`contrastive-jax train`."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
from collections.abc import Sequence
from typing import Any

from contrastive_jax.cli.common import split_overrides


def _cmd_train(args: argparse.Namespace, extra: Sequence[str]) -> int:
    from contrastive_jax.config import load_config

    # The config first: a typo in it is a one-line error before the mesh, the input pipeline
    # and the step are built. Loading it already imports jax and flax (the model registry's
    # defaults), and TensorFlow when `data.sources` are checked, so that takes seconds.
    config = load_config(args.config, split_overrides(extra))
    from contrastive_jax.train.loop import train

    result = train(config, args.workdir, on_stop=_exit_now)
    print(json.dumps(result, sort_keys=True))
    return _exit_code(result)


def _exit_code(result: dict[str, Any]) -> int:
    # Preemption (SIGTERM) is a clean exit for schedulers; Ctrl-C keeps the shell convention.
    return 130 if result.get("interrupted_by") == signal.SIGINT else 0


def _exit_now(result: dict[str, Any]) -> None:
    """Ends a run stopped by a signal at once: its checkpoint is committed and its metrics
    closed (train.loop.train), and what is left, the input pipeline's and the
    interpreter's teardown, only costs the seconds a preemption notice does not give."""
    print(json.dumps(result, sort_keys=True), flush=True)
    import jax

    if jax.process_count() > 1:  # leave the job as its atexit hook would: a barrier
        jax.distributed.shutdown()
    logging.shutdown()  # flushes the log handlers
    sys.stderr.flush()
    os._exit(_exit_code(result))


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """The train subcommand."""
    p = sub.add_parser("train", help="train or resume a model in a workdir",
                       epilog="Override any config key with --config.a.b=value.")
    p.add_argument("--config", required=True, help="configs/NAME.py[:k=v,...]")
    p.add_argument("--workdir", required=True, help="checkpoints, metrics and logs go here")
    p.set_defaults(run=_cmd_train)
