"""Benchmark code on tiny cases: the right keys, max-batch's search is exact, and `bench step`
runs without TensorFlow."""

import json
import os
import subprocess
import sys

import jax
import pytest
from helpers import tiny_config
from xla_flags import CHEAP_COMPILE

from contrastive_jax.bench.flops import matmul_peak
from contrastive_jax.bench.loss_memory import _fits, loss_memory, max_batch
from contrastive_jax.bench.train_step import bench_train_step


def test_loss_memory_reports_per_device_bytes():
    row = loss_memory("sigmoid_chunked_bidir", local_batch=8, num_devices=4, dim=16)
    assert row["global_batch"] == 32 and row["devices"] == 4
    assert row["temp_bytes"] > 0
    assert row["argument_bytes"] >= 2 * 8 * 16 * 4  # this device's rows of both towers


def test_tiles_bound_the_rings_memory_as_the_model_says():
    """loss.tile=256 at b=1024: both rings hold b x tile pieces, not b x b blocks, and the
    memory model (bench/loss_memory.ring_model_bytes) is close to XLA's compiled bytes."""
    rows = {v: loss_memory(v, local_batch=1024, num_devices=2, dim=128) for v in (
        "sigmoid_chunked", "softmax_chunked", "sigmoid_chunked_tile256",
        "softmax_chunked_tile256")}
    for ring in ("sigmoid_chunked", "softmax_chunked"):
        assert rows[f"{ring}_tile256"]["temp_bytes"] < 0.3 * rows[ring]["temp_bytes"]
    for variant, row in rows.items():
        assert 0.8 < row["model_bytes"] / row["temp_bytes"] < 1.25, (variant, row)


def test_max_batch_is_the_largest_batch_that_fits():
    budget_gb = 2e-4  # ~210 kB: a batch of a few hundred 16-d rows
    row = max_batch("sigmoid", budget_gb, num_devices=2, dim=16)
    best = row["max_global_batch"]
    assert best > 0 and best % 2 == 0
    assert _fits("sigmoid", best, 16, 2, budget_gb * 2**30)
    assert not _fits("sigmoid", best + 2, 16, 2, budget_gb * 2**30)


def test_bench_step_reports_flops_and_mfu():
    peak = matmul_peak(size=128, repeats=2)
    assert peak["flops_per_sec"] > 0
    row = bench_train_step(tiny_config(train={"microbatches": 2}), steps=2,
                           peak_flops_per_sec=peak["flops_per_sec"])
    assert row["flops_per_step"] > 0 and 0 < row["mfu"] <= row["mfu_best"]
    assert 0 < row["step_ms_best"] <= row["step_ms"]
    assert row["microbatches"] == 2 and row["devices"] == jax.device_count()
    # The ordinary step is timed and counted from one compilation: the same model FLOPs.
    ordinary = bench_train_step(tiny_config(), steps=1)
    assert ordinary["flops_per_step"] == row["flops_per_step"]


def test_bench_eval_times_both_towers_against_the_train_step():
    from contrastive_jax.bench.eval_speed import bench_eval

    step, image, text = bench_eval(tiny_config(), batch_size=24, batches=2, steps=1)
    assert step["bench"] == "train_step" and step["examples_per_sec"] > 0
    for row, tower in ((image, "image"), (text, "text")):
        assert row["bench"] == "eval" and row["tower"] == tower and row["batch"] == 24
        assert 0 < row["batch_ms_best"] <= row["batch_ms"] and row["per_sec"] > 0
        # Within rounding: the ratio is of the unrounded rates, the rows print rounded ones.
        assert row["vs_train_step"] == pytest.approx(
            row["per_sec"] / step["examples_per_sec"], abs=0.011)


# The CLI's `bench step` with TensorFlow made unimportable, as on an accelerator host that
# has jax but not the input stack: the step's benchmark reads no data.
_NO_TENSORFLOW = """
import json, sys
class NoTensorFlow:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("tensorflow", "tensorflow_datasets"):
            raise ImportError(f"{name} is not installed here")
sys.meta_path.insert(0, NoTensorFlow())
from contrastive_jax.cli import main
# The demo config with a one-layer, 32-wide model: what is tested is the import, not the size.
tiny = [f"--config.model.{tower}.{key}={value}" for tower in ("image", "text")
        for key, value in (("depth", 1), ("width", 32), ("mlp_dim", 64), ("num_heads", 2))]
assert main(["bench", "step", "--config", "configs/demo_siglip.py", "--steps", "1",
             "--matmul-size", "128", "--config.train.batch_size=8",
             "--config.model.embed_dim=16", *tiny]) == 0
assert not any(name.split(".")[0] == "tensorflow" for name in sys.modules)
"""


def test_bench_step_needs_no_tensorflow():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": CHEAP_COMPILE}
    out = subprocess.run([sys.executable, "-c", _NO_TENSORFLOW], cwd=root, capture_output=True,
                         text=True, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    row = json.loads(out.stdout.strip().splitlines()[-1])
    assert row["bench"] == "train_step" and row["flops_per_step"] > 0
