"""XLA's cheapest CPU backend pipeline, for the test processes and the CLI processes the
tests start (no imports: conftest sets it before jax loads).

The tests' models are tiny, so compiling dominates running: this pipeline compiles about
30% faster (test_scan_layers + test_train_step, 211 s -> 149 s on 2 cores) and computes
the same programs. XLA:CPU's newer fusion emitters (MLIR) take about twice as long to
compile a tiny train step as its classic LLVM emitters: off, an 8-device-vs-1 step test
took 6.6-7.9 s instead of 11.2-12.1 s (cold cache). Tests check our math, not XLA's
optimiser; benchmarks and real runs keep the default pipeline.
"""

CHEAP_COMPILE = ("--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
                 " --xla_cpu_use_fusion_emitters=false")
