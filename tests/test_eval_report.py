"""Eval report: few-shot probe (big_vision recipe), multi-caption retrieval, report files."""

import json
import os

import numpy as np
import pytest
from helpers import fashion_tasks, tiny_config
from PIL import Image

from contrastive_jax.evaluate import retrieval
from contrastive_jax.evaluate.confusion_png import render_confusion
from contrastive_jax.evaluate.fewshot import fewshot_accuracies
from contrastive_jax.evaluate.linear_probe import (
    BIAS_CONSTANT,
    class_permutations,
    fewshot_indices,
    fit_probe,
    probe_accuracy,
)


def unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def test_fewshot_shots_are_deterministic_nested_and_as_big_vision_draws_them():
    labels = np.random.default_rng(1).integers(0, 4, size=200)
    one, five = fewshot_indices(labels, 1, 4, seed=3), fewshot_indices(labels, 5, 4, seed=3)
    np.testing.assert_array_equal(five, fewshot_indices(labels, 5, 4, seed=3))
    assert set(one) <= set(five) and np.all(np.bincount(labels[five]) == 5)
    assert not np.array_equal(five, fewshot_indices(labels, 5, 4, seed=4))
    # big_vision: one rng per seed, a permutation of each class's indices in class order.
    rng = np.random.default_rng(3)
    want = np.concatenate([rng.permutation(np.where(labels == c)[0])[:5] for c in range(4)])
    np.testing.assert_array_equal(five, want)
    with pytest.raises(ValueError, match="fewer than 90 shots"):
        fewshot_indices(labels, 90, 4)


@pytest.mark.parametrize("dim", [8, 60])  # 20 shots: primal (N >= D+1) and dual (N < D+1)
def test_probe_is_ridge_regression_on_whitened_features_with_a_bias_constant(dim):
    rng = np.random.default_rng(0)
    centers = 3 * rng.normal(size=(4, dim))
    labels = rng.integers(0, 4, size=400)
    x = centers[labels] + 0.3 * rng.normal(size=(400, dim))
    idx = fewshot_indices(labels[:200], 5, 4)
    l2 = 2.0**10 if dim == 8 else 0.5
    probe = fit_probe(x[idx], labels[idx], 4, l2=l2)
    mean, std = x[idx].mean(0), x[idx].std(0) + 1e-5
    xb = np.concatenate([(x[idx] - mean) / std, np.full((20, 1), BIAS_CONSTANT)], axis=1)
    y = 2 * np.eye(4)[labels[idx]] - 1
    ridge = np.linalg.solve(xb.T @ xb + l2 * np.eye(dim + 1), xb.T @ y)
    np.testing.assert_allclose(probe.w, ridge, atol=1e-8)
    assert probe_accuracy(probe, x[200:], labels[200:]) == 1.0
    per_seed = fewshot_accuracies(x[:200], labels[:200], x[200:], labels[200:], 4, [1, 5],
                                  seeds=2, l2_reg=l2)
    assert len(per_seed[1]) == len(per_seed[5]) == 2 and per_seed[5][0] == 1.0
    perms = class_permutations(labels[:200], 4, 1)
    one = np.concatenate([p[:1] for p in perms])
    assert per_seed[1][1] == probe_accuracy(fit_probe(x[one], labels[one], 4, l2), x[200:],
                                            labels[200:])


def brute_force_recalls(zimg, ztxt, owner, ks=(1, 5, 10)):
    sims = zimg @ ztxt.T
    out = {}
    for k in ks:
        top_txt = np.argsort(-sims, axis=1)[:, :k]
        out[f"i2t_r{k}"] = np.mean([np.any(owner[top_txt[i]] == i) for i in range(len(zimg))])
        top_img = np.argsort(-sims.T, axis=1)[:, :k]
        out[f"t2i_r{k}"] = np.mean([owner[j] in top_img[j] for j in range(len(ztxt))])
    return out


def test_multi_caption_retrieval_matches_brute_force_and_stays_chunked(monkeypatch):
    rng = np.random.default_rng(0)
    n = 40
    counts = rng.integers(1, 10, size=n)  # uneven, 5 on average (COCO has 5 to 7)
    owner = np.repeat(np.arange(n), counts)
    zimg = unit(rng.normal(size=(n, 16)))
    ztxt = unit(zimg[owner] + 1.2 * rng.normal(size=(len(owner), 16)))
    shapes = []
    real = retrieval._similarities
    monkeypatch.setattr(retrieval, "_similarities",
                        lambda q, k: shapes.append((len(q), len(k))) or real(q, k))
    got = retrieval.retrieval_recalls(zimg, ztxt, chunk=7, text_image=owner)
    want = brute_force_recalls(zimg, ztxt, owner)
    assert got.keys() == want.keys()
    for key in want:
        assert got[key] == pytest.approx(want[key]), key
    assert 0 < got["i2t_r1"] < got["i2t_r10"] < 1 and 0 < got["t2i_r1"] < got["t2i_r10"] < 1
    # No block ever has more rows than the chunk: the full N x M matrix is never formed.
    assert max(rows for rows, _ in shapes) == 7
    assert len(shapes) == -(-n // 7) + -(-len(owner) // 7)
    with pytest.raises(ValueError, match="at least one caption"):
        retrieval.retrieval_recalls(zimg, ztxt[:3], text_image=owner[:3])


def test_confusion_png_has_a_cell_per_pair_coloured_by_rate():
    confusion = np.array([[8, 2, 0], [0, 10, 0], [5, 0, 5]])
    image = render_confusion(confusion, ["t-shirt", "ankle boot", "bag"], title="demo")
    w, h = image.size
    assert w > 3 * 36 and h > 3 * 36
    pixels = np.asarray(image)
    # The bottom-right cell is the (bag, bag) cell: rate 0.5, a mid blue.
    assert tuple(pixels[h - 8 - 36 // 2 + 12, w - 8 - 4]) == (142, 162, 207)
    # Its left neighbour (bag predicted as ankle boot) has count 0: white.
    assert tuple(pixels[h - 8 - 36 // 2 + 12, w - 8 - 36 - 4]) == (255, 255, 255)
    with pytest.raises(ValueError, match="does not match 2 class names"):
        render_confusion(confusion, ["a", "b"])


def test_eval_cli_writes_json_and_markdown_report_with_fewshot(trained_workdir, tmp_path):
    from contrastive_jax import cli

    out = str(tmp_path / "report")
    tasks = fashion_tasks(fewshot={"shots": [1, 5], "seeds": 2, "batch_size": 64},
                          retrieval=32)
    code = cli.main(["eval", "--model", trained_workdir, "--out", out,
                     f"--config.evals.tasks={tasks!r}"])
    assert code == 0
    with open(os.path.join(out, "report.json")) as f:
        report = json.load(f)
    metrics = report["metrics"]
    assert report["step"] == 6
    per_class = [k for k in metrics if k.startswith("zeroshot/fashion_mnist/per_class/")]
    assert len(per_class) == 10 and "zeroshot/fashion_mnist/per_class/ankle boot" in metrics
    zs = report["zeroshot"]["fashion_mnist"]
    confusion = np.array(zs["confusion"])
    assert confusion.sum() == zs["count"] == 50
    assert metrics["zeroshot/fashion_mnist/top1"] == pytest.approx(np.trace(confusion) / 50)
    for k in (1, 5):
        seeds = report["fewshot"]["fashion_mnist"][f"{k}shot"]["per_seed"]
        assert len(seeds) == 2 and metrics[f"fewshot/fashion_mnist/{k}shot"] == np.mean(seeds)
    assert "retrieval/fashion_mnist/i2t_r1" in metrics
    md = open(os.path.join(out, "report.md")).read()
    assert "| fewshot/fashion_mnist/5shot |" in md and "| ankle boot |" in md
    assert Image.open(os.path.join(out, zs["confusion_png"])).format == "PNG"


def test_eval_bad_input_is_one_line(trained_workdir, tmp_path, capsys):
    from contrastive_jax import cli

    base = ["eval", "--model", trained_workdir, "--out", str(tmp_path)]
    # A checkpoint of another architecture than the (overridden) config.
    assert cli.main(base + ["--config.model.text.width=48"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    # More shots than the training split has for a class (the fake train split: 200 images).
    fewshot = fashion_tasks(fewshot={"shots": [1, 500]})[-1:]
    assert cli.main(base + [f"--config.evals.tasks={fewshot!r}"]) == 2
    err = capsys.readouterr().err
    assert "fewer than 500 shots" in err and err.count("\n") == 1
    assert not os.path.exists(os.path.join(str(tmp_path), "report.json"))


def test_retrieval_eval_reads_every_caption_of_a_multi_caption_dataset(tmp_path):
    import tensorflow_datasets as tfds

    from contrastive_jax.config import eval_tasks
    from contrastive_jax.data.tokenizer import Tokenizer, train_tokenizer
    from contrastive_jax.evaluate import runner
    from contrastive_jax.evaluate.embed import encode_images, encode_texts
    from contrastive_jax.models.state import ModelDef
    from contrastive_jax.parallel.mesh import create_mesh
    from contrastive_jax.train.init_state import create_train_state
    from contrastive_jax.train.optimizer import create_optimizer

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(11, 28, 28, 1), dtype=np.uint8)
    captions = [[f"item {i} view {j}" for j in range(1 + i % 4)] for i in range(11)]

    class MultiCaptionToy(tfds.core.GeneratorBasedBuilder):
        VERSION = tfds.core.Version("1.0.0")

        def _info(self):
            return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
                "image": tfds.features.Image(shape=(28, 28, 1)),
                "captions": tfds.features.Sequence({"text": tfds.features.Text()})}),
                disable_shuffling=True)

        def _split_generators(self, dl_manager):
            return {"test": self._generate_examples()}

        def _generate_examples(self):
            for i in range(11):
                yield i, {"image": images[i], "captions": {"text": captions[i]}}

    data_dir = str(tmp_path / "tfds")
    MultiCaptionToy(data_dir=data_dir).download_and_prepare()
    config = tiny_config(data={"data_dir": data_dir})
    task = eval_tasks.parse_task({"kind": "retrieval", "name": "toy", "chunk": 4,
                                   "data": {"kind": "tfds", "name": "multi_caption_toy",
                                            "split": "test"}}, 0)
    flat = [c for caps in captions for c in caps]
    tokenizer = Tokenizer(train_tokenizer(iter(flat * 20), str(tmp_path / "t"), vocab_size=40))
    mesh = create_mesh(config.mesh)
    state, _ = create_train_state(config, create_optimizer(config.optimizer, 10)[0], mesh)
    model_def = ModelDef(config.model)
    got = runner.run_retrieval_task(task, config, model_def, state, tokenizer, mesh)
    zimg = encode_images(model_def, state, images.astype(np.float32) / 127.5 - 1.0, mesh)
    ztxt = encode_texts(model_def, state, tokenizer.encode_batch(flat, 8), mesh)
    owner = np.repeat(np.arange(11), [len(c) for c in captions])
    want = retrieval.retrieval_recalls(zimg, ztxt, text_image=owner)
    want["mean_r1"] = (want["i2t_r1"] + want["t2i_r1"]) / 2
    assert got.keys() == {f"retrieval/toy/{k}" for k in want}
    for k, v in want.items():
        assert got[f"retrieval/toy/{k}"] == pytest.approx(v, abs=1e-6), k
