"""How close the demo model's matmul shapes get to the big-matmul peak on this CPU.

    nice -n 10 python3 benchmarks/cpu_matmul_shapes.py

The demo (configs/demo_siglip.py, batch 256) multiplies [4096, 96] activations (256 images x
16 tokens) by 96 x 96 and 96 x 384 kernels, and runs attention as 768 tiny [16, 32] x [32, 16]
products. Each shape is timed best-of-`repeats`, interleaved with the 2048^3 reference so
that a shared machine's load hits both alike; one JSON line per shape, with its fraction of
the reference's FLOP/s.
"""

from __future__ import annotations

import json
import time

import jax
import jax.numpy as jnp

SHAPES = {  # name: (lhs shape, rhs shape); a leading dim on both is a batch of products
    "reference_2048": ((2048, 2048), (2048, 2048)),
    "img_qkv_96x96": ((4096, 96), (96, 96)),
    "img_fc1_96x384": ((4096, 96), (96, 384)),
    "img_fc2_384x96": ((4096, 384), (384, 96)),
    "img_attn_scores": ((768, 16, 32), (768, 32, 16)),
    "txt_fc1_64x256": ((4096, 64), (64, 256)),
}


def best_seconds(fn, args, repeats: int) -> float:
    fn(*args).block_until_ready()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn(*args).block_until_ready()
        best = min(best, time.perf_counter() - start)
    return best


def main(repeats: int = 20) -> None:
    key = jax.random.key(0)
    matmul = jax.jit(jnp.matmul)
    arrays = {name: (jax.random.normal(key, a), jax.random.normal(key, b))
              for name, (a, b) in SHAPES.items()}
    ref_rate = 0.0
    for name, (a, b) in arrays.items():
        flops = 2.0 * a.size * b.shape[-1]
        rate = flops / best_seconds(matmul, (a, b), repeats)
        # The reference again right after: the best of its runs so far is the peak.
        ref_a, ref_b = arrays["reference_2048"]
        ref_rate = max(ref_rate, 2.0 * 2048**3 / best_seconds(matmul, (ref_a, ref_b), 3))
        print(json.dumps({"shape": name, "lhs": list(a.shape), "rhs": list(b.shape),
                          "gflops_per_sec": round(rate / 1e9, 2),
                          "fraction_of_peak": round(rate / ref_rate, 3)}), flush=True)


if __name__ == "__main__":
    main()
