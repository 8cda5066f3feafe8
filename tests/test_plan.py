"""`plan` compiles for TPU topologies with libtpu (no TPU needed): names, the step's per-chip
memory against a hand count, each sharded loss, the one-line refusal, the collectives."""

import json
import math
import os

import jax
import pytest
from helpers import tiny_config

pytest.importorskip("libtpu", reason="libtpu is not installed (pip install -e .[tpu]): "
                                     "compiling for a TPU topology needs it")

from contrastive_jax.bench.loss_memory import compile_loss_grad  # noqa: E402
from contrastive_jax.errors import ConfigError  # noqa: E402
from contrastive_jax.plan.compile import plan_mesh, target_devices  # noqa: E402
from contrastive_jax.plan.topology import parse_target  # noqa: E402

TESTS = os.path.dirname(os.path.abspath(__file__))


def aligned_config(**sections):
    """A one-block model whose every array fills TPU tiles (8 x 128 floats on the last two
    axes), so the compiler's bytes equal a hand count with no layout padding: 8 heads of 128,
    width 1024, 8-channel 28 px images, 128-d embeddings."""
    size = {"variant": None, "width": 1024, "depth": 1, "mlp_dim": 1024, "num_heads": 8}
    return tiny_config(model={"embed_dim": 128,
                              "image": {**size, "channels": 8},
                              "text": size}, **sections)


@pytest.mark.parametrize("name, jax_name, chips", [
    ("v4-32", "v4:2x2x4", 16), ("v5p-128", "v5:4x4x4", 64), ("v5litepod-16", "v5e:4x4", 16),
    ("v6e-256", "v6e:16x16", 256), ("v4:2x2x2", "v4:2x2x2", 8), ("V5E:2x2", "v5e:2x2", 4)])
def test_topology_names(name, jax_name, chips):
    target = parse_target(name)
    assert (target.jax_name, target.chips) == (jax_name, chips)
    assert parse_target(name, slices=2).chips == 2 * chips


@pytest.mark.parametrize("name, jax_name, chip", [
    ("h100-8", "1x1x8", "NVIDIA H100 80GB HBM3"), ("a100-16", "1x2x8", "NVIDIA A100-SXM4-80GB"),
    ("A100-40GB-128", "1x16x8", "NVIDIA A100-SXM4-40GB"), ("a100-40gb-4", "1x1x4",
                                                            "NVIDIA A100-SXM4-40GB")])
def test_gpu_topology_names(name, jax_name, chip):
    """GPUs: that many, 8 per host; the 40 GB A100 is named by its memory."""
    target = parse_target(name)
    assert (target.jax_name, target.chip.name, target.name) == (jax_name, chip, name.lower())
    config = target.topology_kwargs()["target_config"]
    assert f'device_description_str: "{chip}"' in config  # the XLA target config it compiles for


@pytest.mark.parametrize("bad", ["v4-31", "v7-8", "v5e:2x2x2", "tpu", "a100-40gb-12",
                                 "v4-32gb-8"])
def test_bad_topology_names_are_config_errors(bad):
    with pytest.raises(ConfigError, match="--topology"):
        parse_target(bad)


def _state_bytes_per_chip(row_state, mesh) -> int:
    """Hand count: every leaf of params + optimizer state, at its shard's shape."""
    return sum(math.prod(x.sharding.shard_shape(x.shape)) * x.dtype.itemsize
               for x in jax.tree.leaves(row_state))


@pytest.mark.parametrize("topology, mesh", [("v5e:2x2", {}),
                                            ("v4:2x2x2", {"data": 4, "fsdp": 2})])
def test_step_memory_matches_a_hand_count(topology, mesh):
    from contrastive_jax.plan.compile import compile_step
    from contrastive_jax.plan.report import plan_row

    target = parse_target(topology)
    config = aligned_config(train={"batch_size": 64}, mesh=mesh)
    compiled = compile_step(config, target_devices(target))
    row = plan_row(config, target, compiled, "aligned")
    assert row["fits"] and row["chips"] == target.chips
    # Judged against what the compiler lets one program use, read from its own refusal of
    # a larger one: less than the chip's HBM (the runtime keeps some; 0.75 GiB on v4).
    assert row["hbm_source"].startswith("TPU compiler")
    assert 0.9 * target.chip.hbm_bytes < row["hbm_bytes"] < target.chip.hbm_bytes
    # The donated state (params, AdamW's two moments, counters) comes back in place.
    hand = _state_bytes_per_chip(compiled.state, compiled.mesh)
    params = sum(x.size for x in jax.tree.leaves(compiled.state.params))
    shards = mesh.get("fsdp", 1)
    assert hand > 3 * 4 * params / shards * 0.95  # f32 params + mu + nu, split over fsdp
    assert hand <= row["alias_bytes"] <= hand + 64 * 1024  # + padded scalars only
    batch = 16 * 28 * 28 * 8 * 4 + 16 * 8 * 4  # this chip's images and token ids
    assert row["argument_bytes"] - row["alias_bytes"] >= batch
    assert row["needed_bytes"] >= row["argument_bytes"] + row["temp_bytes"]
    # Data parallel: one all-reduce of the gradients; with fsdp, gathers and scatters too.
    kinds = {c["kind"] for c in row["collectives"]}
    assert "all-reduce" in kinds
    assert row["flops_per_chip"] > 0 and row["step_s_bound"] > 0


@pytest.mark.parametrize("variant", ["softmax_sharded", "softmax_chunked", "sigmoid_chunked"])
def test_each_sharded_loss_compiles_for_tpu_meshes(variant):
    """Each sharded loss's value_and_grad compiles for `v5e:2x2` (one batch axis) and for a
    2-D mesh on `v4:2x2x2` (the batch over data x fsdp); the rings' hops are counted once
    per trip of their while loops."""
    from contrastive_jax.plan.hlo import collectives

    one_d = plan_mesh(tiny_config(), target_devices(parse_target("v5e:2x2")))
    two_d = plan_mesh(tiny_config(mesh={"data": 4, "fsdp": 2}),
                      target_devices(parse_target("v4:2x2x2")))
    local, dim = 256, 128
    for mesh in (one_d, two_d):
        compiled = compile_loss_grad(variant, local * mesh.size, dim, mesh.size, mesh=mesh,
                                     batch_axes=("data", "fsdp"))
        # Each chip holds its own rows of both towers' embeddings (f32), nothing more.
        assert compiled.memory_analysis().argument_size_in_bytes >= 2 * local * dim * 4
        found = {c["kind"]: c for c in collectives(compiled.as_text(), mesh.size)}
        if "chunked" not in variant:
            assert "collective-permute" not in found
            continue
        # The forward and the backward ring each pass a local x dim f32 text chunk at
        # least (chips - 1) times.
        hops = 2 * (mesh.size - 1)
        assert found["collective-permute"]["count"] >= hops
        assert found["collective-permute"]["bytes"] >= hops * local * dim * 4


def test_a_far_too_large_batch_is_refused_in_one_line(tmp_path, capfd, monkeypatch):
    """The CLI's own entry point, in this process (libtpu is loaded already: a process of
    its own would load it again); capfd holds everything written to the file descriptors,
    C++ logging included."""
    from contrastive_jax.cli import main

    monkeypatch.setenv("XLA_FLAGS", os.environ.get("XLA_FLAGS", ""))  # plan may append to it
    config = tmp_path / "tiny.py"
    config.write_text(f"import sys\nsys.path.insert(0, {TESTS!r})\n"
                      "from helpers import tiny_config\n\n\n"
                      "def get_config():\n    return tiny_config()\n")
    returncode = main(["plan", "--config", str(config), "--topology", "v5e:2x2",
                       "--batch", str(2**22), "--no-suggest"])
    out, err = capfd.readouterr()
    assert returncode == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: does not fit"), err
    assert "TPU v5e" in lines[0] and "GiB" in lines[0]
    row = json.loads(out.strip().splitlines()[-1])
    assert row["fits"] is False and row["needed_bytes"] > row["hbm_bytes"]


def _cuda_plugin() -> bool:
    import importlib.util

    return (importlib.util.find_spec("jax_plugins") is not None
            and importlib.util.find_spec("jax_plugins.xla_cuda12") is not None)


@pytest.mark.skipif(_cuda_plugin(), reason="jax's CUDA plugin is installed: GPUs are planned")
def test_a_gpu_target_is_refused_in_one_line(capsys, monkeypatch):
    from contrastive_jax.cli import main

    monkeypatch.setenv("XLA_FLAGS", os.environ.get("XLA_FLAGS", ""))  # plan appends to it

    assert main(["plan", "--config", "configs/demo_siglip.py", "--topology", "h100-8"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: --topology h100-8:"), err


def test_multislice_meshes_span_the_slices_with_data():
    target = parse_target("v5e:2x2", slices=2)
    mesh = plan_mesh(tiny_config(), target_devices(target))
    assert dict(mesh.shape) == {"data": 8, "fsdp": 1, "model": 1}
    slices = [d.slice_index for d in mesh.devices.flat]
    assert slices == sorted(slices) and set(slices) == {0, 1}  # each slice a run of `data`
    compiled = compile_loss_grad("sigmoid_chunked", 8 * 64, 128, 8, mesh=mesh)
    assert compiled.memory_analysis().argument_size_in_bytes >= 2 * 64 * 128 * 4


@pytest.mark.skipif(not _cuda_plugin(), reason="jax's CUDA plugin is not installed (see "
                    "docs/plan.md: jax-cuda12-plugin, jax-cuda12-pjrt and the nvcc wheels)")
@pytest.mark.parametrize("name", ["h100-8", "a100-40gb-8"])
def test_a_ring_loss_compiles_for_eight_gpus_without_a_gpu(name):
    """Deviceless GPU compile (needs XLA_FLAGS=--xla_gpu_autotune_level=0, as the CLI sets)."""
    from contrastive_jax.plan.hlo import collectives

    target = parse_target(name)
    mesh = plan_mesh(tiny_config(), target_devices(target))
    assert mesh.devices.flat[0].device_kind == target.chip.name
    compiled = compile_loss_grad("sigmoid_chunked", 8 * 64, 128, 8, mesh=mesh)
    permutes = {c["kind"]: c for c in collectives(compiled.as_text(), 8)}["collective-permute"]
    assert permutes["count"] >= 2 * 7  # known_trip_count of each ring's while loop


@pytest.mark.skipif(not _cuda_plugin(), reason="jax's CUDA plugin is not installed")
def test_the_cli_plans_a_clip_step_for_a100s_without_a_gpu():
    """The whole step for the 40 GB A100s of CLIP B/32's paper topology (one block a tower):
    without the Triton GEMM flag `plan` sets for Ampere, XLA fails this compile."""
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-m", "contrastive_jax.cli", "plan", "--config",
         "configs/recipes/clip_b32.py", "--topology", "a100-40gb-8", "--batch", "64",
         "--config.model.image.depth=1", "--config.model.text.depth=1", "--no-suggest"],
        capture_output=True, text=True, cwd=os.path.dirname(TESTS), timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    row = json.loads(out.stdout.strip().splitlines()[-1])
    assert (row["chip"], row["chips"], row["fits"]) == ("NVIDIA A100-SXM4-40GB", 8, True)
    assert row["hbm_bytes"] == 42331013120  # the 40 GB target config's device memory


def test_versions_out_of_lockstep_are_named_in_one_line(monkeypatch):
    import importlib.metadata

    from contrastive_jax.plan.compile import lockstep_problem

    assert lockstep_problem() is None  # the installed jax, jaxlib and libtpu are the pinned set
    real = importlib.metadata.version
    monkeypatch.setattr(importlib.metadata, "version",
                        lambda name: "0.0.41" if name == "libtpu" else real(name))
    line = lockstep_problem()
    assert "\n" not in line and "libtpu 0.0.41" in line and f"jax {jax.__version__}" in line


def test_suggestions_go_from_remat_to_fsdp_to_micro_batches():
    from contrastive_jax.plan.run import _variants

    tried = list(_variants(tiny_config()))
    assert tried[0] == {"model.remat": "full"}
    assert tried[1] == {"model.remat": "full", "mesh.data": 1, "mesh.fsdp": -1}
    assert tried[2] == {"model.remat": "full", "train.microbatches": 2}
    assert {"model.remat": "full", "train.microbatches": 16, "mesh.data": 1,
            "mesh.fsdp": -1} in tried


def test_max_batch_brackets_the_largest_batch_that_fits(monkeypatch):
    """`--max-batch` on a chip given 12 MiB of HBM: the batch it returns was compiled and
    fits, the one a batch-shard step above it was compiled and does not."""
    import dataclasses

    from contrastive_jax.plan import max_batch, topology

    small = dataclasses.replace(topology.CHIPS["v5e"], hbm_bytes=12 * 2**20)
    monkeypatch.setitem(topology.CHIPS, "v5e", small)
    target = parse_target("v5e:2x2")
    log = []
    found = max_batch.max_batch(tiny_config(train={"batch_size": 32}), target, "tiny",
                                target_devices(target), log=log.append)
    lo, hi = found["max_global_batch"], found["first_not_fitting"]
    probes = {p["global_batch"]: p for p in found["probes"]}
    # 4 batch shards: steps of 4; the bracket is exact, and both ends were compiled.
    assert lo % 4 == 0 and hi == lo + 4 and lo >= 32
    assert probes[lo]["fits"] and not probes[hi]["fits"]
    assert probes[lo]["needed_bytes"] <= small.hbm_bytes < probes[hi]["needed_bytes"]
    assert found["at_max"]["global_batch"] == lo and found["at_max"]["fits"]
    assert f"max-batch: compiling global batch {hi} ..." in log
    # Doubling and bisection took 6 compiles here: 32, 64, 48, 40, 44 and 36.
    assert found["compiles"] <= 6, found["probes"]


def _memory_probe(needed, hbm: int = 1000):
    """A stand-in for a compile: bytes `needed(batch)` against `hbm`, counting the calls."""
    calls = []

    def probe(batch: int) -> dict:
        calls.append(batch)
        return {"fits": needed(batch) <= hbm, "needed_bytes": needed(batch), "hbm_bytes": hbm}

    return probe, calls


@pytest.mark.parametrize("needed, best", [
    (lambda b: 100 + 3 * b, 296),  # affine: the line predicts it, two more compiles prove it
    (lambda b: 100 + 3 * b + (400 if b > 200 else 0), 200),  # a jump: bisection finishes
    (lambda b: 100 + b * b // 64, 240),  # convex: the line overshoots
    (lambda b: 100 + 96 * -(-b // 32), 288),  # tile padding: a staircase of 4 steps a stair
    (lambda b: 5000, 0),  # nothing fits
])
def test_max_batch_search_is_exact_whatever_the_memory_curve(needed, best):
    from contrastive_jax.plan.max_batch import search

    probe, calls = _memory_probe(needed)
    found = search(probe, start=64, unit=8, log=lambda _: None)
    assert found["max_global_batch"] == best
    if best:
        assert found["first_not_fitting"] == best + 8 and {best, best + 8} <= set(calls)
    assert len(calls) == len(set(calls)) == found["compiles"] <= 11  # none compiled twice
    if best == 296:
        assert found["prediction_exact"] and calls == [64, 32, 296, 304]


def test_fsdp_with_micro_batches_holds_no_more_than_a_hand_count():
    """FSDP + GradCache + remat on a TPU topology: the per-chip temporaries stay within the
    most FSDP should ever hold (a gathered f32 copy of the weights and of their gradients)
    plus a few of one micro-batch's largest activations. XLA's windowed einsum loops (one
    output buffer each) took 9x the f32 params here before the step turned them off
    (parallel/mesh.py `compiler_options`; docs/benchmarks.md, So400m/14)."""
    from contrastive_jax.parallel.mesh import compiler_options
    from contrastive_jax.plan.compile import compile_step

    devices = target_devices(parse_target("v4:2x2x2"))
    # Data parallelism (no fsdp axis) keeps XLA's defaults.
    assert compiler_options(plan_mesh(tiny_config(), devices)) is None
    width, mlp, tokens, batch, micro = 256, 1024, 64, 512, 2
    size = {"variant": None, "width": width, "depth": 1, "mlp_dim": mlp, "num_heads": 2}
    config = tiny_config(
        model={"embed_dim": 128, "remat": "full", "dtype": "bfloat16",
               "image": {**size, "channels": 8, "image_size": 112, "patch_size": 14},
               "text": {**size, "vocab_size": 128, "max_len": 16}},
        data={"max_len": 16}, train={"batch_size": batch, "microbatches": micro},
        mesh={"data": 1, "fsdp": -1})
    compiled = compile_step(config, devices)
    chips = compiled.mesh.size
    assert compiled.mesh.shape["fsdp"] == chips == 8
    params = sum(x.size for x in jax.tree.leaves(compiled.state.params)) * 4
    rows = batch // chips // micro  # one micro-batch's examples on one chip
    hidden = rows * tokens * mlp * 4  # its largest activation: the f32 MLP hidden layer
    bound = 2 * params + 4 * hidden
    temp = compiled.executable.memory_analysis().temp_size_in_bytes
    loops = compiled.executable.as_text().count("windowed_dot_general_body")
    assert temp <= bound, (f"{temp / 2**20:.1f} MiB of temporaries > {bound / 2**20:.1f} MiB "
                           f"({loops} windowed einsum loop lines in the HLO)")
