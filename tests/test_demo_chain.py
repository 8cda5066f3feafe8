"""Chained demo runs: a demo that starts from another demo's run (`init=`) trains from what
that demo's config produces today, and LiT works from each architecture the demos train.

The chains are read from the README and the demo configs' docstrings (a command with
`configs/X.py:init=DIR` after one that trains `--workdir DIR`), and each model comes from
the named config itself, made tiny only in depth and vocabulary: when a demo's architecture
changes, these tests fail instead of the user.
"""

import ast
import json
import os
import re
import shutil

import pytest

from contrastive_jax.config import load_config
from contrastive_jax.data.tokenizer_setup import ensure_tokenizer
from contrastive_jax.export import export_checkpoint
from contrastive_jax.train import loop

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
INIT_RUN = re.compile(r"--config configs/(\w+)\.py:init=(\S+)")
TRAIN_RUN = re.compile(r"--config configs/(\w+)\.py(?::\S*)? --workdir (\S+)")
# Tiny in size only: layers, vocabulary, batch and steps. Pools, heads, positions, patches
# and the text tower's pooling stay the demo's. One logical stream: these runs prove the
# architectures' chaining, not the data order (test_data_order.py), and 16 streams cost
# each run their start-up checks.
TINY = ("model.image.depth=1", "model.text.depth=1",
        "model.text.vocab_size=64", "data.tokenizer.vocab_size=64",
        "train.batch_size=16", "train.log_every=1", "data.logical_streams=1",
        "data.shuffle_buffer=64", "evals.tasks=[]")


def _texts() -> dict[str, str]:
    """The README and each demo config's docstring, by name."""
    texts = {"README.md": open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()}
    for name in sorted(os.listdir(os.path.join(ROOT, "configs"))):
        if name.startswith("demo_") and name.endswith(".py"):
            with open(os.path.join(ROOT, "configs", name), encoding="utf-8") as f:
                texts[name] = ast.get_docstring(ast.parse(f.read())) or ""
    return texts


def chains() -> list[tuple[str, str]]:
    """(source demo, chained demo) for every `init=DIR` whose DIR a named demo trains."""
    found = set()
    for where, text in _texts().items():
        trained = {workdir: demo for demo, workdir in TRAIN_RUN.findall(text)}
        for demo, init in INIT_RUN.findall(text):
            if init not in trained:
                raise AssertionError(f"{where}: configs/{demo}.py:init={init} names no "
                                     f"workdir trained in the same text")
            found.add((trained[init], demo))
    return sorted(found)


def test_the_chains_are_found():
    assert ("demo_siglip", "demo_lit") in chains()


def _config(spec: str, data_dir: str, *extra: str):
    return load_config(os.path.join(ROOT, "configs", spec),
                       [*TINY, f"data.data_dir={data_dir}", *extra])


def _train_steps(workdir: str) -> list[int]:
    with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
        return [row["step"] for row in map(json.loads, f) if "train/loss" in row]


@pytest.fixture(scope="module")
def train(fake_data_dir, tmp_path_factory):
    """loop.train, with the workdir's tokenizer trained once per module: every run here
    would train the same one (the same captions and vocabulary size), and a workdir's
    tokenizer.model is what a run reuses, as a resumed run does."""
    trained = {}

    def run(config, workdir: str) -> None:
        key = (config.data.tokenizer.vocab_size, str(config.data.lowercase))
        if key not in trained:
            trained[key] = str(tmp_path_factory.mktemp("tokenizer"))
            ensure_tokenizer(config.data, trained[key])
        os.makedirs(workdir, exist_ok=True)
        shutil.copyfile(os.path.join(trained[key], "tokenizer.model"),
                        os.path.join(workdir, "tokenizer.model"))
        loop.train(config, workdir)

    return run


@pytest.fixture(scope="module")
def trained(train, fake_data_dir, tmp_path_factory):
    """A demo config (made tiny, plus overrides) trained 1 step, once per module."""
    runs = {}

    def run(spec: str, *overrides: str) -> str:
        key = (spec, overrides)
        if key not in runs:
            runs[key] = str(tmp_path_factory.mktemp(spec.removesuffix(".py")))
            train(_config(f"{spec}:steps=1", fake_data_dir, *overrides), runs[key])
        return runs[key]

    return run


@pytest.mark.parametrize("source,demo", chains())
@pytest.mark.parametrize("origin", ["workdir", "hf"])
def test_a_chained_demo_trains_from_its_source(source, demo, origin, train, trained,
                                               fake_data_dir, tmp_path):
    init = trained(f"{source}.py")
    if origin == "hf":
        init = "hf:" + export_checkpoint(init, "hf", str(tmp_path / "hf"))
    workdir = str(tmp_path / demo)
    train(_config(f"{demo}.py:init={init},steps=1", fake_data_dir), workdir)
    assert _train_steps(workdir) == [1]


# LiT from each architecture the demos train: (its config and overrides, the exports tried).
ARCHITECTURES = {
    "map_no_head": ("demo_siglip.py", (), ("open_clip",)),  # workdir and hf: the chain test
    # The workdir route is the chain test's (demo_siglip), so each other architecture is
    # imported once, through an export that keeps its head.
    "gap_with_head": ("demo_siglip.py", ("model.image.pool=gap", "model.image.head=True"),
                      ("open_clip",)),
    "clip": ("demo_clip.py", (), ("hf",)),
}
LIT = ("train.locked.image=True", "train.init_from.tower=image",
       "train.embedding_cache.enabled=True")


@pytest.mark.parametrize("name,origin", [(name, origin) for name, (_, _, origins)
                                         in ARCHITECTURES.items() for origin in origins])
def test_lit_from_each_demo_architecture(name, origin, train, trained, fake_data_dir,
                                        tmp_path):
    spec, overrides, _ = ARCHITECTURES[name]
    init = trained(spec, *overrides)
    if origin != "workdir":
        init = f"{origin}:" + export_checkpoint(init, origin, str(tmp_path / origin))
    workdir = str(tmp_path / "lit")
    train(_config(f"{spec}:steps=1", fake_data_dir, *overrides, *LIT,
                       f"train.init_from.path={init}"), workdir)
    assert _train_steps(workdir) == [1]
    with open(os.path.join(workdir, "config.json"), encoding="utf-8") as f:
        locked = json.load(f)["train"]["locked"]
    assert locked["image"] and not locked["text"]


def test_an_explicit_pattern_matching_nothing_is_still_refused(train, trained, fake_data_dir,
                                                              tmp_path):
    """The head the image shorthand implies is optional; a pattern the user wrote is not."""
    from contrastive_jax.errors import ConfigError

    config = _config("demo_siglip.py:steps=1", fake_data_dir, *LIT,
                     "train.init_from.path=" + trained("demo_siglip.py"),
                     'train.locked.patterns=["^img_head/"]')
    with pytest.raises(ConfigError, match=r"^config key 'train.locked.patterns': pattern "
                                          r"'\^img_head/' matches no parameter"):
        train(config, str(tmp_path / "w"))
