"""The code base stays ruff-clean (rules in pyproject.toml)."""

import subprocess


def test_ruff_clean():
    result = subprocess.run(["ruff", "check", "contrastive_jax", "tests", "configs"],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout
