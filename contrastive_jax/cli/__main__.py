"""`python -m contrastive_jax.cli`: the same as the `contrastive-jax` command."""

import sys

from contrastive_jax.cli import main

if __name__ == "__main__":
    sys.exit(main())
