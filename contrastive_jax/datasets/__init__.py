"""TFDS builders the project ships; importing this package registers them with TFDS."""

from contrastive_jax.datasets import fashion_mnist_captions  # noqa: F401  (registers builder)
