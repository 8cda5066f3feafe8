"""contrastive_jax: large-batch image-text contrastive pretraining in JAX/Flax NNX."""

__version__ = "0.1.0"
