"""Prompt sets and chunked retrieval recall (the few-shot probe: test_eval_report.py)."""

import numpy as np
import pytest

from contrastive_jax.evaluate.prompts import fill, get_prompts
from contrastive_jax.evaluate.retrieval import positive_ranks, retrieval_recalls


def test_clip_prompt_sets():
    full, best = get_prompts("clip_80"), get_prompts("clip_best_7")
    assert len(full) == len(set(full)) == 80 and len(best) == 7
    assert set(best) <= set(full) and all(t.count("{}") == 1 for t in full)
    assert fill("itap of a {}.", "shirt") == "itap of a shirt."


def test_unknown_prompt_set_names_its_key():
    from contrastive_jax.errors import ConfigError

    with pytest.raises(ConfigError, match=r"config key 'evals.tasks\[\].prompts': unknown "
                                          "prompt set 'clip_81'; known: fashion_mnist_heldout"):
        get_prompts("clip_81")
    with pytest.raises(ValueError, match="retrieval chunk must be >= 1"):
        retrieval_recalls(np.eye(2), np.eye(2), chunk=0)


def test_run_evals_builds_every_task_of_the_table_the_same_way(monkeypatch):
    from contrastive_jax.config import default_config
    from contrastive_jax.errors import ConfigError
    from contrastive_jax.evaluate import runner
    from contrastive_jax.registry import Registry

    assert set(runner.TASK_KINDS) == {"zeroshot", "retrieval", "fewshot", "embedding_stats"}
    with pytest.raises(ConfigError, match="config key 'evals.tasks\\[\\].kind': unknown task "
                                          "kind 'linear'"):
        runner.TASK_KINDS["linear"]
    calls = []

    def fake(kind):
        def run(task, config, model_def, state, tokenizer, mesh, details):
            calls.append((kind, task["name"], model_def, state, tokenizer, mesh, details))
            return {f"{kind}/{task['name']}/{'10shot' if kind == 'fewshot' else 'top1'}": 0.5,
                    f"{kind}/{task['name']}/other": 1.0}
        return run

    monkeypatch.setattr(runner, "TASK_KINDS",
                        Registry("task kind", {k: fake(k) for k in runner.TASK_KINDS}))
    config = default_config()
    config.evals.tasks = [
        {"kind": "fewshot", "name": "fashion_mnist",
         "data": {"kind": "tfds", "name": "fashion_mnist_captions"}},
        {"kind": "zeroshot", "name": "folder", "every": 7,
         "data": {"kind": "image_folder", "path": "/x"}},
        {"kind": "embedding_stats", "name": "stats",
         "data": {"kind": "tfds", "name": "fashion_mnist_captions"}}]
    config.train.eval_every = 5
    details = {}
    metrics = runner.run_evals(config, "model", "state", "tok", "mesh", details)
    assert metrics == {"fewshot/fashion_mnist/10shot": 0.5, "fewshot/fashion_mnist/other": 1.0,
                       "zeroshot/folder/top1": 0.5, "zeroshot/folder/other": 1.0,
                       "embedding_stats/stats/top1": 0.5, "embedding_stats/stats/other": 1.0,
                       "suite/mean": 0.5}  # embedding statistics have no headline
    assert calls == [("fewshot", "fashion_mnist", "model", "state", "tok", "mesh", details),
                     ("zeroshot", "folder", "model", "state", "tok", "mesh", details),
                     ("embedding_stats", "stats", "model", "state", "tok", "mesh", details)]
    assert [row["metric"] for row in details["tasks"]] == ["fewshot/fashion_mnist/10shot",
                                                           "zeroshot/folder/top1", None]
    calls.clear()
    assert set(runner.run_evals(config, "m", "s", "t", "x", step=14)) == {
        "zeroshot/folder/top1", "zeroshot/folder/other", "suite/mean"}  # every 7, not 5
    assert [c[0] for c in calls] == ["zeroshot"]


def unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


@pytest.mark.parametrize("chunk", [1, 7, 1000])
def test_retrieval_ranks_match_a_full_argsort(chunk):
    rng = np.random.default_rng(0)
    zimg = unit(rng.normal(size=(50, 8)))
    ztxt = unit(zimg + 0.8 * rng.normal(size=(50, 8)))
    ranks = positive_ranks(zimg, ztxt, chunk)
    order = np.argsort(-(zimg @ ztxt.T), axis=1)
    expected = np.array([np.flatnonzero(order[i] == i)[0] for i in range(50)])
    np.testing.assert_array_equal(ranks, expected)
    r = retrieval_recalls(zimg, ztxt, chunk=chunk)
    assert r["i2t_r1"] == np.mean(expected == 0) and r["i2t_r10"] == np.mean(expected < 10)
    assert 0 < r["i2t_r1"] < r["i2t_r5"] <= r["i2t_r10"] <= 1
    assert retrieval_recalls(zimg, zimg)["t2i_r1"] == 1.0
    # Collapsed embeddings: every key ties, so recall@1 is 0, not a perfect score.
    same = np.ones((10, 4)) / 2
    assert retrieval_recalls(same, same)["i2t_r1"] == 0.0


def test_retrieval_eval_on_heldout_pairs(fake_data_dir, tmp_path):
    from helpers import fashion_tasks, tiny_config

    from contrastive_jax.config.eval_tasks import tasks_of
    from contrastive_jax.data.tokenizer import Tokenizer, train_tokenizer
    from contrastive_jax.data.tokenizer_setup import training_captions
    from contrastive_jax.evaluate import runner
    from contrastive_jax.models.state import ModelDef
    from contrastive_jax.parallel.mesh import create_mesh
    from contrastive_jax.train.init_state import create_train_state
    from contrastive_jax.train.optimizer import create_optimizer

    config = tiny_config(data={"data_dir": fake_data_dir},
                         evals={"tasks": fashion_tasks(stats=0, retrieval=40)[1:]})
    tokenizer = Tokenizer(train_tokenizer(training_captions(config.data), str(tmp_path / "t"),
                                          vocab_size=64))
    mesh = create_mesh(config.mesh)
    state, _ = create_train_state(config, create_optimizer(config.optimizer, 10)[0], mesh)
    model_def = ModelDef(config.model)
    metrics = runner.run_evals(config, model_def, state, tokenizer, mesh)
    assert sorted(metrics) == sorted([*(f"retrieval/fashion_mnist/{d}_r{k}"
                                        for d in ("i2t", "t2i") for k in (1, 5, 10)),
                                      "retrieval/fashion_mnist/mean_r1", "suite/mean"])
    assert metrics["suite/mean"] == metrics["retrieval/fashion_mnist/mean_r1"] == (
        metrics["retrieval/fashion_mnist/i2t_r1"] + metrics["retrieval/fashion_mnist/t2i_r1"]) / 2
    (task,) = tasks_of(config)
    zimg, ztxt = runner.heldout_pairs(config, model_def, state, tokenizer, mesh, 40,
                                      task["data"])
    assert zimg.shape == ztxt.shape == (40, 16)
    assert metrics["retrieval/fashion_mnist/i2t_r5"] == retrieval_recalls(zimg, ztxt)["i2t_r5"]


def test_dataset_without_class_names_is_a_one_line_error(monkeypatch):
    from types import SimpleNamespace

    from contrastive_jax.datasets import catalogue
    from contrastive_jax.errors import DataError

    monkeypatch.setattr(catalogue, "get_builder",
                        lambda *a: SimpleNamespace(info=SimpleNamespace(features={})))
    with pytest.raises(DataError, match="has no class names"):
        catalogue.class_names("captions_only")
