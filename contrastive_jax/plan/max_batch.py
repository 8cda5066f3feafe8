"""`plan --max-batch`: the largest global batch whose step fits, in few compiles.

A step's per-chip bytes are close to affine in the batch: the state is the same at every
batch, while the activations, the batch itself and the loss's blocks grow with it. So the
search compiles two batches that fit, draws the line through their bytes, predicts the largest
multiple of the batch step under the chip's memory, and checks the prediction by compiling it
(it must fit) and one step above it (it must not). Only compiled answers are reported: when the
prediction is off (tiles pad the bytes into steps; the compiler rematerialises near the
limit), the line is redrawn through the ends of the bracket the compiles have proved, a few
times, then bisection finishes, down to one step.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import ml_collections

from contrastive_jax.plan.run import Log, plan, with_overrides
from contrastive_jax.plan.topology import Target

Probe = Callable[[int], dict[str, Any]]


# Line-guided probes before plain bisection takes over: two prove an exact prediction, and a
# staircase of tile-padded bytes can need a few more.
MAX_GUESSES = 4


def _usable(row: dict[str, Any]) -> bool:
    """A compiled total: an out-of-memory compile reports its temporaries alone."""
    return row.get("needed_bytes") is not None and "compiler_message" not in row


def predict(rows: dict[int, dict[str, Any]], unit: int, lo: int,
            hi: int | None) -> int | None:
    """The largest multiple of `unit` under the memory limit on a line through compiled
    totals: through the bracket's ends when both are compiled totals, else through the two
    largest batches that fit; None without such a line. The limit is the smallest HBM figure
    seen (libtpu's "available HBM" in an out-of-memory message is below the nominal size)."""
    if hi is not None and _usable(rows[hi]):
        b1, b2 = lo, hi
    else:
        fitting = sorted(b for b, r in rows.items() if r["fits"] and _usable(r))
        if len(fitting) < 2:
            return None
        b1, b2 = fitting[-2:]
    n1, n2 = rows[b1]["needed_bytes"], rows[b2]["needed_bytes"]
    slope = (n2 - n1) / (b2 - b1)
    if slope <= 0:
        return None
    limit = min(r["hbm_bytes"] for r in rows.values())
    return b2 + int((limit - n2) // slope) // unit * unit


def search(probe: Probe, start: int, unit: int, log: Log) -> dict[str, Any]:
    """Brackets the largest multiple of `unit` for which `probe(batch)["fits"]`: returns it
    (`max_global_batch`, 0 if not even `unit` fits) and the compiled batch one step above
    it that did not fit (`first_not_fitting`), with every probe made."""
    rows: dict[int, dict[str, Any]] = {}

    def fits(batch: int) -> bool:
        if batch not in rows:
            rows[batch] = probe(batch)
        return rows[batch]["fits"]

    lo, hi, batch = 0, None, max(unit, start // unit * unit)
    while not fits(batch):  # a batch that fits: the start, else halve it
        hi = batch
        if batch == unit:
            return _result(rows, 0, unit, None)
        batch = max(unit, batch // 2 // unit * unit)
    lo = batch
    # A second point for the line: half the batch that fits, or twice it at one step.
    second = lo // 2 // unit * unit if lo >= 2 * unit else 2 * lo
    if hi is None or second < hi:
        if fits(second) and second > lo:
            lo = second
        elif second > lo:
            hi = second
    first_guess, guesses, bisect_next = None, 0, False
    while hi is None or hi - lo > unit:
        width = None if hi is None else hi - lo
        guess = None if bisect_next or guesses >= MAX_GUESSES else predict(rows, unit, lo, hi)
        if guess is not None:
            # The prediction itself, else the step above the batch that fits (to prove it).
            guess = max(lo + unit, guess if hi is None else min(guess, hi - unit))
            guesses += 1
            first_guess = guess if first_guess is None else first_guess
            log(f"max-batch: the line through the compiled bytes predicts {guess}")
        elif hi is None:
            guess = 2 * lo
        else:  # bisection
            guess = lo + (hi - lo) // (2 * unit) * unit
        if fits(guess):
            lo = guess
        else:
            hi = guess
        # A line that did not halve the bracket (a curved memory profile) gives way to one
        # bisection: never much worse than bisection alone.
        bisect_next = (not bisect_next and width is not None and guess != lo + unit
                       and hi - lo > width / 2)
    return _result(rows, lo, hi, first_guess)


def _result(rows: dict[int, dict[str, Any]], lo: int, hi: int,
            predicted: int | None) -> dict[str, Any]:
    """`predicted`: the first line's guess; exact when it is the answer."""
    return {"max_global_batch": lo, "first_not_fitting": hi, "predicted": predicted,
            "prediction_exact": predicted is not None and predicted == lo,
            "compiles": len(rows),
            "compile_s": round(sum(r.get("compile_s", 0.0) for r in rows.values()), 1),
            "probes": [{"global_batch": b, "fits": r["fits"], "needed_bytes": r["needed_bytes"],
                        "compile_s": r.get("compile_s")} for b, r in sorted(rows.items())],
            "at_max": rows.get(lo)}


def max_batch(config: ml_collections.ConfigDict, target: Target, name: str, devices: list,
              log: Log) -> dict[str, Any]:
    """The largest global batch that fits the target for the config's remat, micro-batches
    and loss, a multiple of the batch shards times the micro-batches, found by `search`
    from the config's batch; each probe is one compile."""
    def probe(batch: int) -> dict[str, Any]:
        log(f"max-batch: compiling global batch {batch} ...")
        row = plan(with_overrides(config, {"train.batch_size": batch}), target, name, devices)
        log(f"max-batch: {batch} {'fits' if row['fits'] else 'does not fit'}"
            + ("" if row.get("needed_bytes") is None else
               f" ({row['needed_bytes'] / 2**30:.2f} GiB)") + f", {row['compile_s']} s")
        return row

    from contrastive_jax.plan.compile import plan_mesh

    mesh = plan_mesh(config, devices)
    unit = mesh.shape["data"] * mesh.shape["fsdp"] * config.train.microbatches
    return search(probe, config.train.batch_size, unit, log)
