"""A plan's numbers: per-chip memory from the compiler, FLOPs, collectives and a roofline
BOUND on the step time (never a measurement: real steps are slower)."""

from __future__ import annotations

import datetime
from typing import Any

import jax
import ml_collections

from contrastive_jax.models.registry import DEFAULT_MODEL
from contrastive_jax.objectives import objective_of
from contrastive_jax.plan.compile import Compiled, libtpu_version, oom_bytes
from contrastive_jax.plan.hlo import collectives
from contrastive_jax.plan.topology import Target

GiB = 2**30


def model_flops_per_example(config: ml_collections.ConfigDict) -> float | None:
    """Model FLOPs of one example's training step: 3x the forward pass of each trained tower
    (forward + backward), 1x a locked one's, none for cached image embeddings; remat's
    recomputation is not model work. None for models other than plain contrastive towers
    (their objective's `plain_towers`)."""
    from contrastive_jax.bench.recipes import tower_gflops

    if not objective_of(config.model.get("name", DEFAULT_MODEL)).plain_towers:
        return None
    towers = tower_gflops(config)
    locked = config.train.locked
    image = 0 if config.train.embedding_cache.enabled else (1 if locked.image else 3)
    return 1e9 * (image * towers["image_run"] + (1 if locked.text else 3) * towers["text_run"])


def memory_row(compiled: Compiled, target: Target) -> dict[str, Any]:
    """Per-chip bytes: XLA's lower bound on the device memory a step needs is generated code
    + arguments + outputs - aliased + temporaries (xla/pjrt/pjrt_executable.h). A TPU step
    fits when that is within the HBM the compiler lets one program use (less than the chip's:
    compile.usable_hbm_bytes); a GPU step, within the memory of the target config. (The
    smaller of the two where both are known.)"""
    chip = target.chip.hbm_bytes
    usable = compiled.usable_hbm_bytes
    by_compiler = usable is not None and usable < chip
    hbm = usable if by_compiler else chip
    source = {"hbm_source": "TPU compiler (usable by one program)" if by_compiler
              else "chip memory (datasheet / target config)", "chip_hbm_bytes": chip}
    if compiled.executable is None:
        needed, available = oom_bytes(compiled.out_of_memory or "")
        return {"fits": False, "hbm_bytes": available or hbm, **source, "needed_bytes": needed,
                "compiler_message": (compiled.out_of_memory or "").splitlines()[0][:400]}
    m = compiled.executable.memory_analysis()
    parts = {"argument_bytes": m.argument_size_in_bytes, "output_bytes": m.output_size_in_bytes,
             "alias_bytes": m.alias_size_in_bytes, "temp_bytes": m.temp_size_in_bytes,
             "code_bytes": m.generated_code_size_in_bytes}
    total = (parts["code_bytes"] + parts["argument_bytes"] + parts["output_bytes"]
             - parts["alias_bytes"] + parts["temp_bytes"])
    return {"fits": total <= hbm, "hbm_bytes": hbm, **source, "needed_bytes": int(total),
            **{k: int(v) for k, v in parts.items()}}


def roofline(flops: float, hbm_bytes: float, wire_bytes: float, target: Target,
             local_batch: int, model_flops: float | None) -> dict[str, Any]:
    """max(FLOPs / peak, bytes / HBM bandwidth, collective bytes / ICI bandwidth): no step
    can be faster, so examples/s and MFU derived from it are upper bounds. XLA's cost analysis
    counts a while loop's body once (scanned layers: one layer), so the compute term takes
    the model's own FLOPs when they are more."""
    chip = target.chip
    if model_flops is not None:
        flops = max(flops, model_flops * local_batch)
    times = {"compute_s": flops / chip.peak_flops, "hbm_s": hbm_bytes / chip.hbm_bytes_per_s,
             "ici_s": wire_bytes / chip.ici_bytes_per_s}
    bound = max(times.values())
    row = {**{k: round(v, 6) for k, v in times.items()}, "step_s_bound": round(bound, 6),
           "bound_by": max(times, key=times.get).removesuffix("_s"),
           "examples_per_s_per_chip_bound": round(local_batch / bound, 1) if bound else None}
    if model_flops is not None and bound:
        row["mfu_bound"] = round(model_flops * local_batch / bound / chip.peak_flops, 4)
    return row


def plan_row(config: ml_collections.ConfigDict, target: Target, compiled: Compiled,
             config_name: str) -> dict[str, Any]:
    """The plan's JSON line."""
    chips = compiled.mesh.size
    local = config.train.batch_size // (compiled.mesh.shape["data"] * compiled.mesh.shape["fsdp"])
    row: dict[str, Any] = {
        "plan": config_name, "topology": target.name, "jax_topology": target.jax_name,
        "slices": target.slices, "chips": chips, "chip": target.chip.name,
        "mesh": dict(compiled.mesh.shape), "global_batch": config.train.batch_size,
        "local_batch": local, "loss": config.loss.name, "remat": config.model.remat,
        "scan_layers": bool(config.model.get("scan_layers", False)),
        "microbatches": config.train.microbatches, "dtype": config.model.get("dtype"),
        "jax": jax.__version__, "libtpu": libtpu_version(),
        "compiler": (f"TPU compiler, jax {jax.__version__}, libtpu {libtpu_version()}"
                     if target.platform == "tpu" else
                     f"XLA GPU compiler of jax {jax.__version__}'s CUDA plugin"),
        "date": datetime.date.today().isoformat(), "compile_s": round(compiled.compile_s, 1),
        **memory_row(compiled, target),
    }
    if compiled.executable is None:
        return row
    # The deviceless GPU path gives no cost analysis (None): the roofline then has the
    # model's FLOPs and no HBM term.
    cost = compiled.executable.cost_analysis() or {}
    if isinstance(cost, (list, tuple)):
        cost = cost[0]
    flops, accessed = float(cost.get("flops", 0.0)), float(cost.get("bytes accessed", 0.0))
    row["cost_analysis"] = bool(cost)
    found = collectives(compiled.executable.as_text(), chips)
    wire = sum(c["wire_bytes"] for c in found)
    per_example = model_flops_per_example(config)
    row.update({"flops_per_chip": flops, "bytes_accessed_per_chip": accessed,
                "model_flops_per_chip": None if per_example is None else per_example * local,
                "collectives": found, "collective_wire_bytes_per_chip": int(wire),
                **roofline(flops, accessed, wire, target, local, per_example)})
    if not cost:  # the compute term is then the model's FLOPs by construction: no MFU
        row["mfu_bound"] = None
    return row


def _gib(value: float | None) -> str:
    return "?" if value is None else f"{value / GiB:.2f} GiB"


def render_table(row: dict[str, Any]) -> str:
    """A readable table of one plan row."""
    lines = [f"plan {row['plan']} on {row['topology']} ({row['jax_topology']}, {row['chips']} "
             f"x {row['chip']}), mesh {row['mesh']}",
             f"  global batch {row['global_batch']} ({row['local_batch']} per chip), loss "
             f"{row['loss']}, remat {row['remat']}, scan_layers {row['scan_layers']}, "
             f"microbatches {row['microbatches']}",
             f"  per-chip memory ({row['compiler']}):"]
    if "temp_bytes" in row:
        for key in ("argument_bytes", "output_bytes", "alias_bytes", "temp_bytes", "code_bytes"):
            lines.append(f"    {key.removesuffix('_bytes'):<10}{_gib(row[key]):>14}")
    lines.append(f"    {'needed':<10}{_gib(row['needed_bytes']):>14}  of "
                 f"{_gib(row['hbm_bytes'])} HBM ({row['hbm_source']}): "
                 f"{'fits' if row['fits'] else 'DOES NOT FIT'}")
    if "flops_per_chip" not in row:
        return "\n".join(lines)
    if row["cost_analysis"]:
        lines.append(f"  compiled per chip: {row['flops_per_chip'] / 1e12:.1f} TFLOP, "
                     f"{row['bytes_accessed_per_chip'] / 1e9:.1f} GB accessed")
    else:
        lines.append("  compiled per chip: no cost analysis from this compiler (the bound "
                     "takes the model's FLOPs and has no HBM term)")
    for c in row["collectives"]:
        lines.append(f"    {c['kind']:<20} x{c['count']:<6} {_gib(c['bytes'])} "
                     f"({_gib(c['wire_bytes'])} over the links)")
    mfu = row.get("mfu_bound")
    lines.append(f"  roofline BOUND (not a measurement): step >= {row['step_s_bound'] * 1e3:.1f} "
                 f"ms ({row['bound_by']}-bound: compute {row['compute_s'] * 1e3:.1f}, HBM "
                 f"{row['hbm_s'] * 1e3:.1f}, ICI {row['ici_s'] * 1e3:.1f} ms)")
    lines.append(f"    <= {row['examples_per_s_per_chip_bound']} examples/s per chip"
                 + ("" if mfu is None else f", MFU <= {mfu:.1%}"))
    return "\n".join(lines)
