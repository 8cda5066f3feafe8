"""train.compilation_cache_dir and train.microbatches config keys."""

import jax
import pytest
from helpers import tiny_config

from contrastive_jax.config import validate
from contrastive_jax.errors import ConfigError
from contrastive_jax.train.loop import enable_compilation_cache


def test_compilation_cache_dir_is_set_only_when_given(tmp_path):
    before = jax.config.jax_compilation_cache_dir
    try:
        enable_compilation_cache(None)
        assert jax.config.jax_compilation_cache_dir == before
        enable_compilation_cache(str(tmp_path))
        assert jax.config.jax_compilation_cache_dir == str(tmp_path)
    finally:
        jax.config.update("jax_compilation_cache_dir", before)


def test_defaults_exist_in_schema():
    config = tiny_config()
    assert config.train.microbatches == 1 and config.train.compilation_cache_dir is None
    assert config.model.remat == "none"


def test_microbatches_must_divide_the_batch():
    with pytest.raises(ConfigError, match="train.microbatches"):
        validate(tiny_config(train={"batch_size": 16, "microbatches": 3}))
