"""The evaluation suite: `evals.tasks` of every kind over every data kind, `eval --model`,
`embed`, the report table and curves, and the bad inputs that must fail in one line."""

import io
import json
import os
import tarfile

import numpy as np
import pytest
from PIL import Image

from contrastive_jax.config import default_config, eval_tasks
from contrastive_jax.errors import ConfigError, DataError

CLASSES = ("bag", "sandal", "shirt")


def _png(rng, value: int) -> bytes:
    pixels = np.clip(rng.normal(value, 30, (28, 28)), 0, 255).astype(np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels, "L").save(out, format="PNG")
    return out.getvalue()


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory) -> str:
    """Three class folders of 4 PNGs each, plus one file that does not decode."""
    root = tmp_path_factory.mktemp("folder")
    rng = np.random.default_rng(0)
    for c, name in enumerate(CLASSES):
        (root / name).mkdir()
        for i in range(4):
            (root / name / f"{i}.png").write_bytes(_png(rng, 60 + 70 * c))
    (root / "shirt" / "broken.png").write_bytes(b"not a png")
    return str(root)


def _task(**kw) -> dict:
    return {"kind": "zeroshot", "name": "t", "data": {"kind": "image_folder", "path": "/x"}, **kw}


def _tasks(*specs) -> list:
    config = default_config()
    config.evals.tasks = list(specs)
    return eval_tasks.tasks_of(config)


def test_schema_fills_defaults_and_names_the_bad_key():
    (task,) = _tasks(_task())
    assert task["prompts"] == "" and task["every"] == 0 and task["batch_size"] == 256
    assert task["template_average"] == "likelihood"
    for spec, match in [
        (_task(shots=[1]), r"'evals.tasks\[0\].shots': unknown for a zeroshot task"),
        (_task(data={"kind": "image_folder"}), r"'evals.tasks\[0\].data.path' is required"),
        (_task(data={"kind": "s3", "path": "x"}), r"'evals.tasks\[0\].data.kind': unknown data"),
        (_task(kind="linear"), r"'evals.tasks\[0\].kind': unknown task kind 'linear'"),
        (_task(name="a/b"), r"'evals.tasks\[0\].name' must be a non-empty name"),
        (_task(data={"kind": "table", "path": "x", "label": "y"}), r"data.label': unknown"),
        ({**_task(kind="retrieval"), "classes": ""}, r"unknown for a retrieval task"),
        (_task(every=-1), r"'evals.tasks\[0\].every' must be an integer >= 0"),
        (_task(template_average="max"),
         r"'evals.tasks\[0\].template_average' must be one of likelihood, log_likelihood"),
    ]:
        with pytest.raises(ConfigError, match=match):
            _tasks(spec)
    with pytest.raises(ConfigError, match="two zeroshot tasks are named 't'"):
        _tasks(_task(), _task())
    config = default_config()
    config.evals.tasks = [_task(foo=1)]
    with pytest.raises(ConfigError, match="foo"):  # validate() runs it before training
        from contrastive_jax.config import validate

        validate(config)


def test_the_default_evaluates_nothing_and_every_picks_the_steps():
    assert eval_tasks.tasks_of(default_config()) == []
    data = {"kind": "tfds", "name": "fashion_mnist_captions"}
    (fewshot,) = _tasks({"kind": "fewshot", "name": "fashion_mnist", "data": data})
    assert fewshot["data"]["split"] == "test" and fewshot["train_data"]["split"] == "train"
    assert eval_tasks.headline_key(fewshot) == "fewshot/fashion_mnist/10shot"
    (stats,) = _tasks({"kind": "embedding_stats", "name": "s", "data": data})
    assert stats["num_examples"] == 1000 and eval_tasks.headline_key(stats) is None
    with pytest.raises(ConfigError, match=r"'evals.tasks\[0\].data.kind': embedding_stats "
                                          "reads TFDS captions"):
        _tasks({"kind": "embedding_stats", "name": "s", "data": _task()["data"]})
    short = {**fewshot, "shots": [1, 5]}
    assert eval_tasks.headline_key(short) == "fewshot/fashion_mnist/5shot"
    often, default = _tasks(_task(name="a", every=5), _task(name="b"))
    assert [eval_tasks.due(often, s, 20) for s in (5, 10, 20, None)] == [True] * 4
    assert [eval_tasks.due(default, s, 20) for s in (5, 10, 20, None)] == [False, False,
                                                                            True, True]
    assert eval_tasks.any_due([often, default], 15, 0) and not eval_tasks.any_due(
        [default], 15, 0)


def _labelled(spec, tiny=True):
    from helpers import tiny_config

    from contrastive_jax.data.labelled import data_config_for, open_labelled

    config = tiny_config()
    parsed = eval_tasks.parse_data(spec, "test")
    return open_labelled(parsed, data_config_for(config, parsed), "task 'x'")


def test_folder_table_and_webdataset_kinds_read_the_same_examples(image_folder, tmp_path):
    folder = _labelled({"kind": "image_folder", "path": image_folder})
    assert folder.names == list(CLASSES) and len(folder) == 13
    batches = list(folder.batches(5))
    assert [int(b["mask"].sum()) for b in batches] == [5, 5, 2]  # the broken one: dropped
    assert batches[0]["image"].shape == (5, 28, 28, 1)
    assert len(folder.undecodable) == 1
    assert folder.describe(folder.undecodable[0]).endswith("shirt/broken.png")
    images = np.concatenate([b["image"][b["mask"] > 0] for b in batches])
    labels = np.concatenate([b["label"][b["mask"] > 0] for b in batches])

    rows = [{"image": os.path.join(image_folder, c, f"{i}.png"), "label": c}
            for c in CLASSES for i in range(4)]
    (tmp_path / "t.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    with open(tmp_path / "t.csv", "w") as f:
        f.write("file,y\n" + "".join(f"{r['image']},{CLASSES.index(r['label'])}\n"
                                     for r in rows))
    with tarfile.open(tmp_path / "shard-0.tar", "w") as tar:
        for n, r in enumerate(rows):
            for ext, data in (("png", open(r["image"], "rb").read()),
                              ("cls", str(CLASSES.index(r["label"])).encode())):
                info = tarfile.TarInfo(f"s{n:03d}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    jsonl = _labelled({"kind": "table", "path": str(tmp_path / "t.jsonl")})
    csv = _labelled({"kind": "table", "path": str(tmp_path / "t.csv"), "image_column": "file",
                     "label_column": "y"})
    wds = _labelled({"kind": "webdataset", "pattern": str(tmp_path / "shard-*.tar")})
    assert jsonl.names == list(CLASSES) and csv.names is None and wds.names is None
    for source in (jsonl, csv, wds):
        (batch,) = list(source.batches(16))
        np.testing.assert_array_equal(batch["label"][:12], labels)
        np.testing.assert_allclose(batch["image"][:12], images)
        assert source.undecodable == []


def test_prompts_may_be_a_list_of_templates():
    from contrastive_jax.evaluate.class_names import task_prompts

    (task,) = _tasks(_task(prompts=["a photo of a {}.", "a {} on a table"]))
    assert task_prompts(task) == ("a photo of a {}.", "a {} on a table")
    for bad in ([], ["no slot"], ["{} and {}"], ["{0}"], [3], {"a": "{}"}):
        with pytest.raises(ConfigError, match=r"^config key 'evals.tasks\[0\].prompts' must "
                                              r"name a prompt set or list templates"):
            _tasks(_task(prompts=bad))


def test_class_names_refuse_names_that_are_not_words(image_folder, tmp_path):
    from contrastive_jax.evaluate.class_names import task_class_names, task_prompts

    folder = _labelled({"kind": "image_folder", "path": image_folder})
    (task,) = _tasks(_task())
    assert task_class_names(task, folder, "w") == list(CLASSES)
    assert task_prompts(task) == task_prompts({"prompts": "clip_80"})
    (task,) = _tasks(_task(classes=["a bag", "a sandal", "a shirt"]))
    assert task_class_names(task, folder, "w")[0] == "a bag"
    (task,) = _tasks(_task(classes="cifar10"))
    assert task_prompts(task)[0] == "a photo of a {}."
    with pytest.raises(DataError, match="the data has 3 classes, its class list 10"):
        task_class_names(task, folder, "w")
    for name in ("n01440764", "17"):
        (tmp_path / name).mkdir(exist_ok=True)
        (tmp_path / name / "a.png").write_bytes(_png(np.random.default_rng(1), 9))
    wordnet = _labelled({"kind": "image_folder", "path": str(tmp_path)})
    (task,) = _tasks(_task(name="imagenet"))
    with pytest.raises(DataError, match="task: its label names are not words .*'17'"):
        task_class_names(task, wordnet, "task")
    (tmp_path / "empty_class").mkdir()
    with pytest.raises(DataError, match="task 'x': class folder .*empty_class has no images"):
        _labelled({"kind": "image_folder", "path": str(tmp_path)})


def test_eval_model_runs_a_suite_and_embed_reproduces_its_top1(trained_workdir, image_folder,
                                                               tmp_path, capsys):
    from contrastive_jax import cli

    tasks = [{"kind": "zeroshot", "name": "demo", "batch_size": 16, "prompts": "class_name",
              "data": {"kind": "tfds", "name": "fashion_mnist_captions", "split": "test"}},
             {"kind": "zeroshot", "name": "folder", "batch_size": 8, "prompts": "class_name",
              "data": {"kind": "image_folder", "path": image_folder}}]
    out = str(tmp_path / "report")
    assert cli.main(["eval", "--model", trained_workdir, "--out", out,
                     f"--config.evals.tasks={tasks!r}"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    demo, folder = result["zeroshot/demo/top1"], result["zeroshot/folder/top1"]
    assert result["suite/mean"] == pytest.approx((demo + folder) / 2)
    assert result["zeroshot/folder/undecodable"] == 1.0
    md = open(os.path.join(out, "report.md")).read()
    assert f"| folder | zeroshot | top1 | {folder:.4f} |" in md
    assert f"| **mean** | | | **{result['suite/mean']:.4f}** |" in md
    assert Image.open(os.path.join(out, "curves.png")).format == "PNG"

    # The same top-1 by hand from `embed`'s outputs (one "{}" prompt per class).
    (tmp_path / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    for flag, value, name in (("--images", image_folder, "img.npy"),
                              ("--texts", str(tmp_path / "classes.txt"), "txt.npy")):
        assert cli.main(["embed", "--model", trained_workdir, flag, value,
                         "--out", str(tmp_path / name), "--batch-size", "5"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["rows"] == 3
    zimg, ztxt = np.load(tmp_path / "img.npy"), np.load(tmp_path / "txt.npy")
    paths = (tmp_path / "img.txt").read_text().splitlines()
    assert len(paths) == len(zimg) == 12 and paths == sorted(paths)  # broken.png: no row
    assert (tmp_path / "txt.txt").read_text().splitlines() == list(CLASSES)
    np.testing.assert_allclose(np.linalg.norm(zimg, axis=1), 1, atol=1e-5)
    truth = np.array([CLASSES.index(os.path.basename(os.path.dirname(p))) for p in paths])
    assert np.mean(np.argmax(zimg @ ztxt.T, axis=1) == truth) == pytest.approx(folder)

    assert cli.main(["plot", trained_workdir, "--out", str(tmp_path / "c.png")]) == 0
    assert Image.open(tmp_path / "c.png").format == "PNG"


def test_eval_suite_errors_are_one_line(trained_workdir, tmp_path, capsys):
    from contrastive_jax import cli

    (tmp_path / "numbers" / "7").mkdir(parents=True)
    (tmp_path / "numbers" / "7" / "a.png").write_bytes(_png(np.random.default_rng(2), 5))
    base = ["eval", "--model", trained_workdir, "--out", str(tmp_path / "r")]
    for tasks, match in [
        ([_task(data={"kind": "image_folder", "path": str(tmp_path / "numbers")})],
         "zeroshot task 't': its label names are not words"),
        ([_task(prompt="x")], "evals.tasks[0].prompt': unknown"),
        ([], "has no eval tasks: give a suite with --config FILE.py"),
        # Found before the model loads, with every other task whose data is missing.
        ([_task(data={"kind": "image_folder", "path": str(tmp_path / "none")})],
         f"1 eval task(s) have no data: zeroshot/t: image folder {tmp_path / 'none'} "
         "not found"),
    ]:
        assert cli.main([*base, f"--config.evals.tasks={tasks!r}"]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1 and match in err, err
    assert cli.main(["eval", "--model", str(tmp_path), "--out", str(tmp_path)]) == 2
    assert "neither a training workdir" in capsys.readouterr().err
