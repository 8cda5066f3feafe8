"""Target names as users write them (v4-32, v5p-128, v5litepod-16, v6e-256) or as jax does
(v4:2x2x4), and the chip figures the roofline divides by.

Chip figures, each with its source (taken 2026-12-06):
- Peak bf16 FLOP/s, HBM capacity and HBM bandwidth: Google Cloud's TPU pages
  (cloud.google.com/tpu/docs/v4, /v5e, /v5p, /v6e; the v5p page's 95 GiB and 2765 GBps,
  the v6e page's v5e/v6e comparison table).
- ICI: the per-link one-way bandwidth of "How to Scale Your Model", part 2
  (jax-ml.github.io/scaling-book/tpus: 4.5e10 B/s v4 and v5e, 9e10 B/s v5p and v6e) times the
  links per chip (6 on the 3-D tori of v4 and v5p, 4 on the 2-D tori of v5e and v6e). The v5p
  product, 5.4e11 B/s, is close to Cloud's 1200 GBps bidirectional (600 GBps each way).
  Dividing collective bytes by every link's bandwidth at once keeps the bound a lower one.

GPUs (`h100-8`, `a100-16`, `a100-40gb-128`, `v100-256`: that many GPUs, 8 per host), from
NVIDIA's datasheets (H100 SXM5, A100 SXM4 80 GB and 40 GB, V100 SXM2): dense bf16 (V100: fp16)
tensor FLOP/s, HBM bandwidth, NVLink bandwidth one way (half the datasheet's bidirectional
figure); HBM capacity from the XLA target config each compiles for (gpu_targets/). `a100` is
the 80 GB part; `a100-40gb` the 40 GB one (A100 datasheet: 1,555 GB/s HBM2, the same 312 TFLOP/s
and 600 GB/s NVLink), on which open_clip's LAION reproductions of CLIP were trained.

Naming (MaxText's accelerator_to_spec_map.py, axlearn's aot_compilation.py): v4 and v5p names
count TensorCores (two per chip, one "megacore" device per chip) on 3-D shapes; v5e and v6e
names count chips on 2-D shapes.
"""

from __future__ import annotations

import dataclasses
import importlib.resources
import math
import re

from contrastive_jax.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class Chip:
    """One accelerator chip's figures (per chip, bytes and bytes/s)."""

    name: str
    peak_flops: float  # bf16 matmul FLOP/s
    hbm_bytes: int
    hbm_bytes_per_s: float
    ici_bytes_per_s: float  # all links, one way
    cores_in_name: int  # TensorCores per chip counted by the Cloud accelerator name
    jax_prefix: str  # jax's topology-string prefix
    target_config: str | None = None  # GPUs: the XLA target config file in gpu_targets/
    xla_flags: tuple[str, ...] = ()  # GPUs: XLA flags their deviceless compile needs


# Without autotuning, XLA (jaxlib 0.10.2) fails to tile some Triton GEMM fusions for Ampere
# ("Couldn't find output tile sizes that satisfy hlo": jax issue 34010, openxla/xla PR 36792,
# whose reviewer suggests keeping such dots out of Triton): plan A100s with cuBLAS GEMMs.
_AMPERE_FLAGS = ("--xla_gpu_enable_triton_gemm=false",)


CHIPS: dict[str, Chip] = {
    "v4": Chip("TPU v4", 275e12, 32 * 2**30, 1200e9, 6 * 45e9, 2, "v4"),
    "v5p": Chip("TPU v5p", 459e12, 95 * 2**30, 2765e9, 6 * 90e9, 2, "v5"),
    # Cloud's "16 GB" and "32 GB" are GiB: libtpu lets one program use 15.75 and 31.25 GiB.
    "v5e": Chip("TPU v5e", 197e12, 16 * 2**30, 819e9, 4 * 45e9, 1, "v5e"),
    "v6e": Chip("TPU v6e", 918e12, 32 * 2**30, 1640e9, 4 * 90e9, 1, "v6e"),
    "h100": Chip("NVIDIA H100 80GB HBM3", 989e12, 84942979072, 3.35e12, 450e9, 1, "",
                 "h100_sxm.txtpb"),
    "a100": Chip("NVIDIA A100-SXM4-80GB", 312e12, 85100068864, 2.039e12, 300e9, 1, "",
                 "a100_sxm_80.txtpb", _AMPERE_FLAGS),
    "a100-40gb": Chip("NVIDIA A100-SXM4-40GB", 312e12, 42331013120, 1.555e12, 300e9, 1, "",
                      "a100_sxm_40.txtpb", _AMPERE_FLAGS),
    "v100": Chip("Tesla V100-SXM2-16GB", 125e12, 16935682048, 900e9, 150e9, 1, "",
                 "v100.txtpb"),
}
GPUS_PER_HOST = 8
# Cloud accelerator-type prefixes -> chip generation.
_CLOUD_PREFIX = {"v4": "v4", "v5p": "v5p", "v5litepod": "v5e", "v5e": "v5e", "v6e": "v6e"}
# jax topology-string prefixes -> chip generation ("v5" is v5p in jax's spelling).
_JAX_PREFIX = {"v4": "v4", "v5": "v5p", "v5p": "v5p", "v5e": "v5e", "v6e": "v6e"}
# Standard slice shapes by chip count (Cloud's v4 / v5p / v5e / v6e configuration tables).
_SHAPES_3D = {4: (2, 2, 1), 8: (2, 2, 2), 16: (2, 2, 4), 32: (2, 4, 4), 64: (4, 4, 4),
              128: (4, 4, 8), 256: (4, 8, 8), 512: (8, 8, 8), 1024: (8, 8, 16),
              2048: (8, 16, 16), 4096: (16, 16, 16), 6144: (16, 16, 24)}
_SHAPES_2D = {1: (1, 1), 4: (2, 2), 8: (2, 4), 16: (4, 4), 32: (4, 8), 64: (8, 8),
              128: (8, 16), 256: (16, 16)}


@dataclasses.dataclass(frozen=True)
class Target:
    """A slice to compile for: its generation, shape and jax's keyword arguments."""

    generation: str
    shape: tuple[int, ...]
    slices: int = 1

    @property
    def chip(self) -> Chip:
        return CHIPS[self.generation]

    @property
    def chips(self) -> int:
        return math.prod(self.shape) * self.slices

    @property
    def platform(self) -> str:
        return "tpu" if self.chip.target_config is None else "cuda"

    @property
    def jax_name(self) -> str:
        if self.platform == "cuda":  # jax's GPU topology: slices x hosts x GPUs per host
            return f"1x{self.shape[0]}x{self.shape[1]}"
        return f"{self.chip.jax_prefix}:{'x'.join(map(str, self.shape))}"

    @property
    def name(self) -> str:
        if self.platform == "cuda":
            return f"{self.generation}-{math.prod(self.shape)}"
        cloud = "v5litepod" if self.generation == "v5e" else self.generation
        one = f"{cloud}-{math.prod(self.shape) * self.chip.cores_in_name}"
        return one if self.slices == 1 else f"{self.slices}x {one}"

    def topology_kwargs(self) -> dict:
        """Keyword arguments of jax.experimental.topologies.get_topology_desc."""
        if self.platform == "cuda":
            config = importlib.resources.files(__package__) / "gpu_targets"
            return {"platform": "cuda", "topology": self.jax_name,
                    "target_config": (config / self.chip.target_config).read_text()}
        kwargs: dict = {"platform": "tpu"}
        if self.chip.cores_in_name == 2:
            kwargs["chip_config_name"] = "megacore"  # one device per chip, as pods run
        bounds = (2, 2, 1)  # hosts of four chips, as MaxText compiles
        if len(self.shape) == 3 and all(s >= b for s, b in zip(self.shape, bounds, strict=True)):
            kwargs["chips_per_host_bounds"] = bounds
        if self.slices > 1:
            kwargs["num_slices"] = self.slices
        return kwargs


def parse_target(text: str, slices: int = 1) -> Target:
    """`v4-32`, `v5p-128`, `v5litepod-16`, `v6e-256` or `v4:2x2x4`, `v5e:4x4`, `v5:4x4x4`;
    GPUs: `h100-8`, `a100-16` (80 GB), `a100-40gb-128`, `v100-256`."""
    if slices < 1:
        raise ConfigError(f"--slices {slices}: need at least one slice")
    name = text.strip().lower()
    match = re.fullmatch(r"([a-z0-9]+):(\d+(?:x\d+)+)", name)
    if match:
        generation = _JAX_PREFIX.get(match.group(1))
        shape = tuple(int(s) for s in match.group(2).split("x"))
        if generation is None:
            raise ConfigError(f"--topology {text!r}: unknown TPU generation {match.group(1)!r}; "
                              f"known: {sorted(_JAX_PREFIX)}")
        want = 3 if CHIPS[generation].cores_in_name == 2 else 2
        if len(shape) != want or min(shape) < 1:
            raise ConfigError(f"--topology {text!r}: {generation} slices have {want}-D shapes")
        return Target(generation, shape, slices)
    # A GPU name may carry its memory size (a100-40gb-128); TPU names never do.
    match = re.fullmatch(r"([a-z0-9]+(?:-\d+gb)?)-(\d+)", name)
    if match and CHIPS.get(match.group(1), CHIPS["v4"]).target_config is not None:
        count = int(match.group(2))
        per_host = min(count, GPUS_PER_HOST)
        if count < 1 or count % per_host or slices != 1:
            raise ConfigError(f"--topology {text!r}: give 1 to {GPUS_PER_HOST} GPUs or a "
                              f"multiple of {GPUS_PER_HOST} (one slice)")
        return Target(match.group(1), (count // per_host, per_host))
    if not match or match.group(1) not in _CLOUD_PREFIX:
        raise ConfigError(f"--topology {text!r}: expected a Cloud TPU type such as v4-32, "
                          "v5p-128, v5litepod-16, v6e-256, a jax topology such as v4:2x2x4, "
                          "or GPUs such as h100-8")
    generation = _CLOUD_PREFIX[match.group(1)]
    chip = CHIPS[generation]
    count = int(match.group(2))
    chips = count // chip.cores_in_name
    shapes = _SHAPES_3D if chip.cores_in_name == 2 else _SHAPES_2D
    if count % chip.cores_in_name or chips not in shapes:
        known = ", ".join(f"{match.group(1)}-{c * chip.cores_in_name}" for c in shapes)
        raise ConfigError(f"--topology {text!r}: not a standard {generation} slice ({known}); "
                          f"give its shape instead, e.g. {chip.jax_prefix}:"
                          f"{'x'.join(map(str, next(iter(shapes.values()))))}")
    return Target(generation, shapes[chips], slices)
