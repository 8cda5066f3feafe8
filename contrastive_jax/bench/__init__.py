"""Benchmarks behind `contrastive-jax bench`: each prints one JSON object per measurement."""
