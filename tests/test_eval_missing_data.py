"""Eval tasks whose data is not there: all named in one line before any model is loaded
(the task, the dataset, its data_dir, how to prepare it); `--skip-missing` runs the ready
ones and lists the rest in the report."""

import json

import jax
import numpy as np
import pytest
from helpers import tiny_config

from contrastive_jax import cli
from contrastive_jax.export import model_spec

SUITE = '''
from contrastive_jax.config import default_config

def get_config():
    c = default_config()
    c.evals.tasks = [
        dict(kind="zeroshot", name="fmnist", batch_size=16,
             data=dict(kind="tfds", name="fashion_mnist_captions", split="test")),
        dict(kind="zeroshot", name="imagenet1k", data=dict(kind="tfds", name="imagenet2012",
                                                          split="validation")),
        dict(kind="zeroshot", name="gtsrb", data=dict(kind="webdataset",
                                                      pattern="/nowhere/gtsrb/*.tar")),
    ]
    return c
'''


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory):
    """A random tiny model as a native npz export (no training: only the data matters)."""
    from contrastive_jax.data.tokenizer import train_tokenizer
    from contrastive_jax.export.native import export_weights
    from contrastive_jax.models import complete_config
    from contrastive_jax.models.state import ModelDef

    root = tmp_path_factory.mktemp("eval_missing")
    config = tiny_config()
    params, _ = ModelDef.init(complete_config(config.model), jax.random.key(0))
    tok = train_tokenizer(["a photo of a shirt", "a dress", "a pair of trousers"] * 20,
                          str(root / "spm"), 64)
    return export_weights("npz", config, jax.tree.map(np.asarray, params), 1, tok,
                          str(root / "npz"))


def _argv(export_dir, suite, data_dir, *more):
    return ["eval", "--model", export_dir, "--config", str(suite), "--out",
            str(suite.parent / "report"), f"--config.data.data_dir={data_dir}", *more]


def test_every_missing_task_is_named_in_one_line_before_the_model_loads(
        export_dir, fake_data_dir, tmp_path, capsys, monkeypatch):
    suite = tmp_path / "suite.py"
    suite.write_text(SUITE)

    def no_loading(*args, **kwargs):
        raise AssertionError("the model was loaded before the data was checked")

    monkeypatch.setattr(model_spec, "load_model", no_loading)
    assert cli.main(_argv(export_dir, suite, fake_data_dir)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: 2 eval task(s) have no data: ")
    line = err[0]
    assert "zeroshot/imagenet1k: TFDS dataset 'imagenet2012' is not prepared in " \
           f"{fake_data_dir}/imagenet2012/" in line
    assert "manual download" in line and "--manual_dir" in line
    assert "zeroshot/gtsrb: no webdataset shards match '/nowhere/gtsrb/*.tar'" in line
    assert "fmnist" not in line and "--skip-missing" in line


def test_skip_missing_runs_the_ready_tasks_and_reports_the_rest(export_dir, fake_data_dir,
                                                                 tmp_path, capsys):
    suite = tmp_path / "suite.py"
    suite.write_text(SUITE)
    assert cli.main(_argv(export_dir, suite, fake_data_dir, "--skip-missing")) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert "zeroshot/fmnist/top1" in result
    assert not any(k.startswith(("zeroshot/imagenet1k", "zeroshot/gtsrb")) for k in result)
    assert result["skipped_missing_data"] == ["zeroshot/gtsrb", "zeroshot/imagenet1k"]
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    assert sorted(report["missing_data"]) == ["zeroshot/gtsrb", "zeroshot/imagenet1k"]
    assert "manual download" in report["missing_data"]["zeroshot/imagenet1k"]
    assert "## Not run: no data" in (tmp_path / "report" / "report.md").read_text()


def test_a_task_reading_an_unprepared_tfds_dataset_is_one_line(tmp_path):
    """Where no check ran first (a training run's periodic evals), the read itself says
    what is missing instead of TFDS's AssertionError."""
    from contrastive_jax.config.eval_tasks import parse_data
    from contrastive_jax.data.labelled import open_labelled
    from contrastive_jax.data.schema import default_data_config
    from contrastive_jax.errors import InputNotFoundError

    spec = parse_data({"kind": "tfds", "name": "cifar10", "data_dir": str(tmp_path)}, "data")
    with pytest.raises(InputNotFoundError, match=r"zeroshot/cifar10: TFDS dataset 'cifar10' "
                       r"is not prepared in .*: prepare it with `tfds build cifar10 "
                       rf"--data_dir {tmp_path}`") as e:
        open_labelled(spec, default_data_config(), "zeroshot/cifar10")
    assert "\n" not in str(e.value)
