"""Config files, `file.py:k=v` arguments, `--config.a.b=v` overrides and their errors."""

import subprocess
import sys
import textwrap

import pytest

from contrastive_jax.config import load_config
from contrastive_jax.errors import ConfigError

DEMO = "configs/demo_siglip.py"


def test_demo_config_loads_with_args_and_overrides():
    config = load_config(f"{DEMO}:steps=7", ["train.batch_size=64", "optimizer.lr=1e-4",
                                             "loss.name=softmax", "model.bias_init=None"])
    assert config.train.steps == 7
    assert config.train.batch_size == 64
    assert config.optimizer.lr == pytest.approx(1e-4)
    assert config.loss.name == "softmax"
    assert config.model.bias_init is None
    assert config.model.image.patch_size == 7  # from the file, on top of the schema


def test_int_override_of_float_key_is_converted():
    config = load_config(DEMO, ["optimizer.lr=1"])
    assert isinstance(config.optimizer.lr, float)


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.batch_sise=64", "unknown config key 'train.batch_sise'"),
        ("trian.steps=3", "unknown config key 'trian'"),
        ("train.steps=many", "config key 'train.steps' expects int"),
        ("train.progress_bar=1", "config key 'train.progress_bar' expects bool"),
        ("train=3", "config key 'train' is a group"),
        ("loss.name=hinge", "config key 'loss.name': unknown loss 'hinge'"),
        ("data.max_len=65", "config key 'data.max_len' (65) exceeds 'model.text.max_len'"),
    ],
)
def test_bad_override_names_the_key(override, message):
    with pytest.raises(ConfigError, match=None) as info:
        load_config(DEMO, [override])
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_bad_config_files(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(str(tmp_path / "nope.py"))
    broken = tmp_path / "broken.py"
    broken.write_text("def get_config(:\n")
    with pytest.raises(ConfigError, match="does not load: SyntaxError"):
        load_config(str(broken))
    unknown = tmp_path / "unknown.py"
    unknown.write_text(textwrap.dedent("""
        def get_config():
            return {"train": {"stepz": 3}}
    """))
    with pytest.raises(ConfigError, match="unknown config key 'train.stepz'"):
        load_config(str(unknown))
    with pytest.raises(ConfigError, match="takes no argument 'stepz'"):
        load_config(f"{DEMO}:stepz=3")


def test_cli_reports_a_bad_key_in_one_line(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "contrastive_jax.cli", "train", "--config", DEMO,
         "--workdir", str(tmp_path / "w"), "--config.train.batch_sise=3"],
        capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip() == "error: unknown config key 'train.batch_sise'"
