"""The command line: one-line errors for bad input, and the data tools."""

import json
import os
import subprocess
import sys

from xla_flags import CHEAP_COMPILE


def run_cli(*args, env=None, timeout=180):
    env = {**os.environ, "XLA_FLAGS": CHEAP_COMPILE, **(env or {})}
    return subprocess.run([sys.executable, "-m", "contrastive_jax.cli", *args], env=env,
                          capture_output=True, text=True, timeout=timeout)


def error_lines(result):
    return [line for line in result.stderr.splitlines() if line.startswith("error:")]


def test_missing_demo_data_is_one_line_with_the_fix(tmp_path):
    result = run_cli("train", "--config", "configs/demo_siglip.py", "--workdir",
                     str(tmp_path / "w"), f"--config.data.data_dir={tmp_path / 'tfds'}",
                     env={"CONTRASTIVE_JAX_FASHION_MNIST_DIR": str(tmp_path / "nothing")})
    assert result.returncode == 2
    [line] = error_lines(result)
    assert "apt-get install dataset-fashion-mnist" in line
    assert "Traceback" not in result.stderr


def test_eval_of_a_directory_that_is_no_workdir(tmp_path):
    result = run_cli("eval", "--model", str(tmp_path))
    assert result.returncode == 2
    [line] = error_lines(result)
    assert line.startswith(f"error: model '{tmp_path}' is neither a training workdir, an export")


def test_config_that_does_not_parse(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("def get_config(:\n")
    result = run_cli("train", "--config", str(bad), "--workdir", str(tmp_path / "w"))
    assert result.returncode == 2
    [line] = error_lines(result)
    assert line.startswith(f"error: config file {bad} does not load: SyntaxError")


def test_data_tokenizer_trains_a_sentencepiece_model(tmp_path):
    corpus = tmp_path / "captions.txt"
    corpus.write_text("\n".join(f"a photo of a {w} number {i}" for i in range(200)
                                for w in ("cat", "dog", "bag")))
    result = run_cli("data", "tokenizer", "--input", str(corpus), "--out",
                     str(tmp_path / "spm"), "--vocab-size", "64")
    assert result.returncode == 0, result.stderr
    path = json.loads(result.stdout.splitlines()[-1])["tokenizer"]
    from contrastive_jax.data.tokenizer import Tokenizer

    tokenizer = Tokenizer(path)
    ids = tokenizer.encode_batch(["a photo of a dog"], max_len=32)[0]
    assert tokenizer.decode(ids) == "a photo of a dog"
