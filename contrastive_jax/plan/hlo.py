"""The collectives of a compiled (SPMD, per-chip) HLO module: kind, count and bytes.

A collective inside a while loop runs once per iteration: its count and bytes are
multiplied by the loop's trip count: XLA's `known_trip_count` where the module has it (GPU),
else read from the loop condition (`i < N`, with `i`'s start from the loop's initial tuple
when that is a constant; TPU modules). Bytes are the collective's result
buffers on one chip; `wire_bytes` is what a bandwidth-optimal ring moves over the chip's
links for it (all-reduce 2(n-1)/n, all-gather and all-to-all (n-1)/n, reduce-scatter
(n-1) times its result, a permute its buffer once), for the roofline's interconnect term.
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from typing import Any

KINDS = ("all-reduce", "all-gather", "reduce-scatter", "collective-permute", "all-to-all",
         "collective-broadcast")
_DTYPE_BYTES = {"pred": 1, "s4": 0.5, "u4": 0.5, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2,
                "bf16": 2, "s32": 4, "u32": 4, "f32": 4, "s64": 8, "u64": 8, "f64": 8,
                "c64": 8, "c128": 16}
_COMPUTATION = re.compile(r"^(?:ENTRY )?%([\w.\-]+) \(")
_INSTRUCTION = re.compile(r"^\s+(?:ROOT )?%([\w.\-]+) = (.*?) ([a-z][\w\-]*)\((.*)$")
_ARRAY = re.compile(r"\b([a-z]+\d*(?:e\d+m\d+\w*)?)\[([\d,]*)\]")
_OP = re.compile(rf"^({'|'.join(KINDS)})(-start)?$")


def _array_bytes(shape_text: str) -> list[float]:
    sizes = []
    for dtype, dims in _ARRAY.findall(shape_text):
        width = _DTYPE_BYTES.get(dtype, 1 if dtype.startswith("f8") else None)
        if width is not None:
            sizes.append(width * math.prod(int(d) for d in dims.split(",") if d))
    return sizes


def _group_size(rest: str, devices: int) -> int:
    explicit = re.search(r"replica_groups=\{\{([\d,]*)\}", rest)
    if explicit:
        return len(explicit.group(1).split(","))
    iota = re.search(r"replica_groups=\[(\d+),(\d+)\]<=", rest)
    if iota:
        return int(iota.group(2))
    mesh = re.search(r"replica_groups=mesh\[([^\]]*)\](?: \{([^}]*)\})?", rest)
    if mesh:
        sizes = {k: int(v) for k, v in re.findall(r"'(\w+)'=(\d+)", mesh.group(1))}
        axes = re.findall(r"'(\w+)'", mesh.group(2)) if mesh.group(2) else list(sizes)
        return math.prod(sizes[a] for a in axes)
    return devices


def _wire_factor(kind: str, n: int) -> float:
    if n <= 1:
        return 0.0
    return {"all-reduce": 2 * (n - 1) / n, "all-gather": (n - 1) / n,
            "all-to-all": (n - 1) / n, "reduce-scatter": float(n - 1)}.get(kind, 1.0)


def _split(text: str) -> tuple[dict[str, list[tuple]], str | None]:
    """{computation: [(name, shape, op, rest), ...]}, and the entry computation's name."""
    computations: dict[str, list[tuple]] = {}
    entry, current = None, None
    for line in text.splitlines():
        head = _COMPUTATION.match(line)
        if head:
            current = head.group(1)
            computations[current] = []
            if line.startswith("ENTRY"):
                entry = current
            continue
        inst = _INSTRUCTION.match(line)
        if inst and current is not None:
            computations[current].append(inst.groups())
    return computations, entry


def _trip_count(computations: dict, condition: str, init: str | None, caller: list) -> int:
    """N - start of a loop whose condition is `i < N` (N, start: constants; N may sit in a
    fusion the condition calls, as on GPUs); 1 if unknown."""
    limit = None
    for _, shape, op, rest in computations.get(condition, []):
        if op == "constant" and shape.startswith("s32[]"):
            limit = int(re.match(r"(-?\d+)", rest).group(1))
        for callee in re.findall(r"calls=%([\w.\-]+)", rest) if limit is None else ():
            for _, inner_shape, inner_op, inner in computations.get(callee, []):
                if inner_op == "constant" and inner_shape.startswith("s32[]"):
                    limit = int(re.match(r"(-?\d+)", inner).group(1))
    if limit is None:
        return 1
    start = 0
    by_name = {name: (op, rest) for name, _, op, rest in caller}
    if init in by_name and by_name[init][0] == "tuple":
        first = re.match(r"%([\w.\-]+)", by_name[init][1])
        if first and by_name.get(first.group(1), ("",))[0] == "constant":
            start = int(re.match(r"(-?\d+)", by_name[first.group(1)][1]).group(1))
    return max(limit - start, 1)


def _multiplicities(computations: dict, entry: str) -> dict[str, int]:
    """How many times each computation runs per call of the entry computation."""
    edges: dict[str, list[tuple[str, int]]] = defaultdict(list)
    for comp, instructions in computations.items():
        for _, _, op, rest in instructions:
            if op == "while":
                body = re.search(r"body=%([\w.\-]+)", rest).group(1)
                cond = re.search(r"condition=%([\w.\-]+)", rest).group(1)
                init = re.match(r"%([\w.\-]+)", rest)
                known = re.search(r'known_trip_count":\{"n":"(\d+)"', rest)  # GPU modules
                trips = (int(known.group(1)) if known else
                         _trip_count(computations, cond, init and init.group(1), instructions))
                edges[comp] += [(body, trips), (cond, trips + 1)]
                continue
            for attr in ("calls", "to_apply", "true_computation", "false_computation"):
                for callee in re.findall(rf"{attr}=%([\w.\-]+)", rest):
                    edges[comp].append((callee, 1))
            branches = re.search(r"branch_computations=\{([^}]*)\}", rest)
            if branches:
                edges[comp] += [(b, 1) for b in re.findall(r"%([\w.\-]+)", branches.group(1))]
    counts: dict[str, int] = defaultdict(int)

    def visit(comp: str, times: int) -> None:
        counts[comp] += times
        for callee, factor in edges.get(comp, ()):
            visit(callee, times * factor)

    visit(entry, 1)
    return counts


def collectives(hlo_text: str, devices: int) -> list[dict[str, Any]]:
    """[{kind, count, bytes, wire_bytes}] per collective kind of a compiled module."""
    computations, entry = _split(hlo_text)
    if entry is None:
        raise ValueError("no ENTRY computation in the HLO text")
    times = _multiplicities(computations, entry)
    rows: dict[str, dict[str, float]] = {}
    for comp, instructions in computations.items():
        runs = times.get(comp, 0)
        for _, shape, op, rest in instructions:
            match = _OP.match(op)
            if not match or not runs:
                continue
            kind, started = match.group(1), bool(match.group(2))
            sizes = [s for s in _array_bytes(shape) if s > 4 or not started]
            # A -start tuple holds its inputs, then its outputs (then context scalars): an
            # all-gather moves its output, the others as many bytes as they take in.
            size = sum(sizes)
            if started and kind == "all-gather":
                size = max(sizes, default=0)
            elif started and kind != "all-reduce":
                size = size / 2
            n = _group_size(rest, devices)
            row = rows.setdefault(kind, {"kind": kind, "count": 0, "bytes": 0, "wire_bytes": 0})
            row["count"] += runs
            row["bytes"] += runs * size
            row["wire_bytes"] += runs * size * _wire_factor(kind, n)
    return [{k: (int(v) if k != "kind" else v) for k, v in row.items()}
            for row in sorted(rows.values(), key=lambda r: -r["wire_bytes"])]
