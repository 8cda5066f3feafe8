"""`contrastive-jax plan`: compile the config's train step for a TPU slice (or GPUs, with
jax's CUDA plugin) on this host, no accelerator needed, and print the per-chip memory,
FLOPs, collectives and a roofline bound."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from contrastive_jax.cli.common import print_json, split_overrides
from contrastive_jax.errors import ConfigError, DoesNotFitError

# XLA reads its flags once, when jax starts: a GPU target needs autotuning off.
_NO_AUTOTUNE = "--xla_gpu_autotune_level=0"


def _gpu_flags(chip_flags: Sequence[str]) -> None:
    """Append the GPU target's XLA flags to XLA_FLAGS, before the first compilation of this
    process, when XLA parses them."""
    for flag in (_NO_AUTOTUNE, *chip_flags):
        if flag not in os.environ.get("XLA_FLAGS", ""):
            os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {flag}".strip()


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _overrides(args: argparse.Namespace, extra: Sequence[str]) -> list[str]:
    overrides = split_overrides(extra)
    if args.batch is not None:
        overrides.append(f"train.batch_size={args.batch}")
    for item in (args.mesh.split(",") if args.mesh else ()):
        if "=" not in item:
            raise ConfigError(f"--mesh {args.mesh!r}: expected AXIS=SIZE,... e.g. data=8,fsdp=2")
        overrides.append(f"mesh.{item.strip()}")
    return overrides


def _cmd_plan(args: argparse.Namespace, extra: Sequence[str]) -> int:
    # The local accelerator plays no part: compile-only devices come from libtpu.
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    from contrastive_jax.config import load_config
    from contrastive_jax.plan import compile as plan_compile
    from contrastive_jax.plan import max_batch, run
    from contrastive_jax.plan.report import render_table
    from contrastive_jax.plan.topology import parse_target

    config = load_config(args.config, _overrides(args, extra))
    topology = args.topology or config.recipe.topology_paper
    if not topology:
        raise ConfigError("--topology: give a TPU slice (e.g. v4-32); this config names no "
                          "paper topology (config key 'recipe.topology_paper')")
    target = parse_target(topology, args.slices)
    if target.platform == "cuda":
        _gpu_flags(target.chip.xla_flags)
    name = os.path.splitext(os.path.basename(args.config.split(":")[0]))[0]
    devices = plan_compile.target_devices(target)
    problem = plan_compile.lockstep_problem()
    if problem:
        _log(problem)
    if args.max_batch:
        result = max_batch.max_batch(config, target, name, devices, _log)
        if result["at_max"] is not None:
            print(render_table(result["at_max"]))
        print(f"largest global batch that fits: {result['max_global_batch']} (compiled; "
              f"{result['first_not_fitting']} compiled and does not fit), "
              f"{result['compiles']} compiles in {result['compile_s']} s")
        print_json({k: v for k, v in result.items() if k != "at_max"}
                   | {"plan": name, "topology": target.name})
        return 0
    row = run.plan(config, target, name, devices)
    print(render_table(row))
    print_json(row)
    if not row["fits"]:
        fix = run.suggest(config, target, name, devices, _log) if args.suggest else None
        if fix is not None:  # the setting that fits, planned in full
            print(f"with {' '.join(f'--config.{k}={v}' for k, v in fix[0].items())}:")
            print(render_table(fix[1]))
            print_json(fix[1])
        raise DoesNotFitError(run.not_fit_message(row, fix, tried=args.suggest))
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "plan", help="compile the train step for a TPU slice here: per-chip memory, "
                     "FLOPs, collectives, roofline bound; exit 2 if it does not fit")
    p.add_argument("--config", required=True, help="configs/NAME.py[:k=v,...]")
    p.add_argument("--topology", default=None,
                   help="v4-32, v5p-128, v5litepod-16, v6e-256, jax's v4:2x2x4, or GPUs "
                        "(h100-8, a100-40gb-128); default: the recipe's paper topology "
                        "(recipe.topology_paper)")
    p.add_argument("--slices", type=int, default=1, help="multislice: this many slices")
    p.add_argument("--batch", type=int, default=None, help="global batch (train.batch_size)")
    p.add_argument("--mesh", default=None, help="mesh axis sizes, e.g. data=-1,fsdp=4")
    p.add_argument("--max-batch", action="store_true",
                   help="the largest global batch that fits: two compiles predict it, two more "
                        "prove it (it fits, one batch step more does not)")
    p.add_argument("--no-suggest", dest="suggest", action="store_false",
                   help="when it does not fit, do not compile remat / micro-batch settings "
                        "to find one that does")
    p.set_defaults(run=_cmd_plan)
