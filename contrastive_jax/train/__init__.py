"""Training: the loop (`loop.train`), the step factory (`step`), the optimizer and a fresh
sharded state (`optimizer`, `init_state`), frozen towers (`lock`, LiT), GradCache, CiT batch
selection (`cit`), `train.init_from`, the embedding cache, non-finite guards, stream progress
and metrics.

It sits above `evaluate` (periodic evals), `export` (init_from's model formats) and
`checkpoints`, and may import any package below those; only `cli`, `bench` and `plan` import
it (docs/architecture.md).
"""
