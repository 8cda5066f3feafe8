"""TFDS builders the project ships and the catalogue of data sets it knows; importing this
package registers the builders with TFDS. It imports only `errors` (docs/architecture.md).
"""

from contrastive_jax.datasets import fashion_mnist_captions  # noqa: F401  (registers builder)
