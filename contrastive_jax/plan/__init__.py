"""`contrastive-jax plan`: compile the loop's own step for a TPU (or GPU) target on any host,
and read per-chip memory, FLOPs, collectives and a roofline bound from the compiler.

It imports `bench` and `train` (the step set-up a run compiles) and what lies below them; only
`cli` imports it (docs/architecture.md).
"""
