"""Benchmarks behind `contrastive-jax bench`: each prints one JSON object per measurement.

It imports `train`, `evaluate` and what lies below them; `plan` reuses its step set-up
(docs/architecture.md).
"""
