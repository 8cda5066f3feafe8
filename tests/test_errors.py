"""Only the project's own error type becomes one line (exit 2); a bug keeps its traceback
(exit 1), even a ValueError raised deep inside the train step."""

import os
import subprocess
import sys
import traceback

import pytest
from xla_flags import CHEAP_COMPILE

from contrastive_jax import cli
from contrastive_jax.errors import ConfigError, DataError, UserError
from contrastive_jax.registry import Registry

BUG = "a bug inside the train step"


def train_argv(data_dir: str, workdir: str) -> list[str]:
    """A 2-step demo run on the fake Fashion-MNIST with a one-layer, 32-wide model, small
    enough to start in seconds (what is tested is the error path, not the model)."""
    tiny = [f"--config.model.{tower}.{key}={value}" for tower in ("image", "text")
            for key, value in (("depth", 1), ("width", 32), ("mlp_dim", 64), ("num_heads", 2))]
    return ["train", "--config", "configs/demo_siglip.py:steps=2", "--workdir", workdir,
            f"--config.data.data_dir={data_dir}", "--config.data.tokenizer.vocab_size=64",
            "--config.model.text.vocab_size=64", "--config.train.batch_size=16",
            "--config.data.shuffle_buffer=64", "--config.train.progress_bar=False",
            "--config.model.embed_dim=16", *tiny]


def raise_in_text_tower(error: Exception):
    def encode_text(self, tokens, mix=None):
        raise error
    return encode_text


def test_a_bug_in_the_step_propagates_and_a_user_error_there_is_one_line(
        fake_data_dir, tmp_path, monkeypatch, capsys):
    from contrastive_jax.models.two_tower import TwoTower

    monkeypatch.setattr(TwoTower, "encode_text", raise_in_text_tower(ValueError(BUG)))
    with pytest.raises(ValueError, match=BUG) as info:
        cli.main(train_argv(fake_data_dir, str(tmp_path / "bug")))
    assert not isinstance(info.value, UserError)
    frames = [f.filename for f in traceback.extract_tb(info.tb)]
    assert any(f.endswith(os.path.join("train", "step.py")) for f in frames)  # in the step

    monkeypatch.setattr(TwoTower, "encode_text", raise_in_text_tower(DataError("bad tokens")))
    capsys.readouterr()
    assert cli.main(train_argv(fake_data_dir, str(tmp_path / "user"))) == 2
    assert capsys.readouterr().err.splitlines()[-1] == "error: bad tokens"


def test_the_command_line_prints_a_bugs_traceback_with_exit_1(fake_data_dir, tmp_path):
    from contrastive_jax.losses import LOSS_NAMES

    env = {**os.environ, "XLA_FLAGS": CHEAP_COMPILE}
    program = ("import sys\n"
               "from contrastive_jax.models.two_tower import TwoTower\n"
               "def encode_text(self, tokens, mix=None):\n"
               f"    raise ValueError({BUG!r})\n"
               "TwoTower.encode_text = encode_text\n"
               "from contrastive_jax import cli\n"
               "sys.exit(cli.main(sys.argv[1:]))\n")
    argv = train_argv(fake_data_dir, str(tmp_path / "w"))
    # The two processes run side by side: each one's start-up is mostly single-threaded.
    bug = subprocess.Popen([sys.executable, "-c", program, *argv], env=env, text=True,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    bad_key = subprocess.Popen([sys.executable, "-m", "contrastive_jax.cli",
                                *train_argv(fake_data_dir, str(tmp_path / "w2")),
                                "--config.loss.name=hinge"], env=env, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _, bug_err = bug.communicate(timeout=300)
    assert bug.returncode == 1, bug_err[-2000:]
    assert "Traceback (most recent call last)" in bug_err
    assert f"ValueError: {BUG}" in bug_err
    assert not [line for line in bug_err.splitlines() if line.startswith("error:")]

    _, bad_key_err = bad_key.communicate(timeout=300)
    assert bad_key.returncode == 2
    assert bad_key_err.strip().splitlines() == [
        f"error: config key 'loss.name': unknown loss 'hinge'; known: {', '.join(LOSS_NAMES)}"]


def test_a_registry_names_its_config_key_and_the_known_names():
    table = Registry("widget", {"a": 1, "b": 2}, config_key="x.widget")
    assert table["b"] == 2 and "a" in table and list(table) == ["a", "b"] and len(table) == 2
    with pytest.raises(ConfigError) as info:
        table["c"]
    assert str(info.value) == "config key 'x.widget': unknown widget 'c'; known: a, b"
    with pytest.raises(ConfigError, match="^unknown widget 'c'; known: a, b$"):
        Registry("widget", {"a": 1, "b": 2})["c"]


def test_user_errors_are_the_builtin_kinds_callers_already_catch():
    from contrastive_jax.errors import CheckpointError, InputNotFoundError

    assert issubclass(ConfigError, ValueError) and issubclass(DataError, ValueError)
    assert issubclass(InputNotFoundError, FileNotFoundError)
    assert all(issubclass(e, UserError) for e in (ConfigError, DataError, InputNotFoundError,
                                                   CheckpointError))
    assert not issubclass(ValueError, UserError)
