"""CiT selection and refresh, counters in metrics.jsonl, `data score` / `data dedup` on a run.

One tiny training run (CiT and a basic filter on, fake Fashion-MNIST) is shared by the
loop-level tests, so the step compiles once.
"""

from __future__ import annotations

import json
import os
import signal

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import FASHION_TEST, tiny_config

from contrastive_jax.checkpoints.store import restore_params
from contrastive_jax.cli import main
from contrastive_jax.data.filters import uid_tables
from contrastive_jax.data.tokenizer_setup import ensure_tokenizer
from contrastive_jax.evaluate.embed import encode_texts
from contrastive_jax.models.state import ModelDef
from contrastive_jax.parallel.mesh import create_mesh, to_global
from contrastive_jax.train import loop
from contrastive_jax.train.cit import CitSelector, make_select_fn, selection_indices
from contrastive_jax.train.init_state import create_train_state
from contrastive_jax.train.optimizer import create_optimizer


def test_selection_indices_topk_and_threshold():
    scores = jnp.array([0.1, 0.9, -0.3, 0.5, 0.7, 0.2, 0.95, 0.0])
    idx, passed = selection_indices(scores, 3, "topk", 0.0)
    assert idx.tolist() == [6, 1, 4] and int(passed) == 7
    # Threshold 0.4: passing candidates 1, 3, 4, 6 in stream order; the first 3 are taken.
    idx, passed = selection_indices(scores, 3, "threshold", 0.4)
    assert idx.tolist() == [1, 3, 4] and int(passed) == 4
    # Threshold 0.92: only candidate 6 passes; the batch is filled with the best others.
    idx, passed = selection_indices(scores, 3, "threshold", 0.92)
    assert idx.tolist() == [6, 1, 4] and int(passed) == 1


@pytest.fixture(scope="module")
def run(fake_data_dir, tmp_path_factory):
    """A 4-step run with CiT (k=2, refresh every 2), a basic filter and a train keep-list."""
    workdir = str(tmp_path_factory.mktemp("cit_run"))
    keep = os.path.join(workdir, "train_uids.txt")
    # Only train uids: the held-out eval pairs (test split) must not be filtered by it.
    uid_tables.write_keep_list(keep, [f"train/{i:06d}" for i in range(200)])
    config = tiny_config(
        data={"data_dir": fake_data_dir, "tokenizer": {"vocab_size": 64}, "shuffle_buffer": 64,
              "filters": {"basic": {"enabled": True, "min_words": 3},
                          "dedup": {"enabled": True, "keep_lists": (keep,)}}},
        train={"steps": 4, "checkpoint_every": 4,
               "cit": {"enabled": True, "oversample": 2, "refresh_every": 2}},
        evals={"tasks": [{"kind": "embedding_stats", "name": "fashion_mnist",
                          "data": FASHION_TEST, "num_examples": 16}]},
    )
    result = loop.train(config, workdir)
    return config, workdir, result


def test_training_loop_logs_filter_counters_and_cit_metrics(run):
    config, workdir, result = run
    assert result["step"] == 4 and "embedding_stats/fashion_mnist/alignment" in result
    with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
        records = [json.loads(line) for line in f]
    train = [r for r in records if "train/loss" in r]
    assert [r["step"] for r in train] == [1, 2, 3, 4]
    # 4 steps x 16 x 2 candidates passed the filter (prefetch may have read ahead).
    assert all(r["filters/basic/kept"] >= 32 * r["step"] for r in train)
    assert train[-1]["filters/basic/dropped"] > 0  # fake captions include 1-2 word ones
    assert train[-1]["filters/dedup/dropped"] == 0
    assert type(train[-1]["filters/basic/kept"]) is int  # counters stay JSON integers
    assert all(0 <= r["cit/passed"] <= 32 for r in train)


def test_cit_picks_rows_matching_metadata_and_refreshes_every_n(run):
    config, workdir, _ = run
    mesh = create_mesh(config.mesh)
    tx, _ = create_optimizer(config.optimizer, config.train.steps)
    state, _ = create_train_state(config, tx, mesh)
    tokenizer = ensure_tokenizer(config.data, workdir)
    model_def = ModelDef(config.model)
    selector = CitSelector(config, model_def, tokenizer, mesh)
    meta_tokens = tokenizer.encode_batch(selector.entries, config.data.max_len)
    rng = np.random.default_rng(0)
    text = rng.integers(3, 60, size=(32, config.data.max_len)).astype(np.int32)
    planted = [3, 8, 12, 17, 21, 25, 28, 30, 1, 5, 9, 14, 19, 23, 26, 31]  # B = 16 rows
    text[planted] = meta_tokens[np.arange(16) % len(meta_tokens)]  # cosine 1 to an entry
    candidates = {"image": rng.uniform(-1, 1, (32, 28, 28, 1)).astype(np.float32),
                  "text": text, "label": np.arange(32, dtype=np.int32)}
    for step in range(5):
        batch, metrics = selector(state, to_global(candidates, mesh), step)
        assert batch["text"].shape == (16, config.data.max_len)
        assert batch["image"].shape == (16, 28, 28, 1)
    assert selector.refreshed_at == [0, 2, 4]
    assert sorted(np.asarray(batch["label"]).tolist()) == sorted(planted)
    # Reference: host-side embeddings of every candidate, best cosine to the metadata.
    zt = encode_texts(model_def, state, text, mesh)
    zm = np.array(encode_texts(model_def, state, meta_tokens, mesh))
    zm /= np.linalg.norm(zm, axis=-1, keepdims=True)
    expected = np.sort(np.max(zt @ zm.T, axis=1))[::-1][:16]
    np.testing.assert_allclose(float(metrics["cit/score_selected"]), expected.mean(), atol=1e-5)
    select = make_select_fn(model_def, mesh, 16, "threshold", 2.0)  # nothing passes
    _, m = select(state.params, state.rest, to_global(candidates, mesh), selector.metadata_emb)
    assert int(m["cit/passed"]) == 0


def _train_records(workdir: str) -> dict[int, dict]:
    with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
        return {r["step"]: r for r in map(json.loads, f) if "train/loss" in r}


def test_cit_resume_selects_exactly_as_the_uninterrupted_run(run, tmp_path, monkeypatch):
    # The fixture's run refreshes the metadata embeddings at steps 0 and 2 (0-based). This
    # one is stopped by SIGTERM during step 2 and saves at 3; resumed, its step 3 must use
    # the embeddings computed at step 2 (saved with the checkpoint), not fresh ones.
    config, workdir, _ = run
    cut = str(tmp_path / "cut")
    select = CitSelector.__call__

    def preempted_in_step_2(self, state, candidates, step):
        if step == 2:
            signal.raise_signal(signal.SIGTERM)  # the loop finishes the step, saves, stops
        return select(self, state, candidates, step)

    monkeypatch.setattr(CitSelector, "__call__", preempted_in_step_2)
    assert loop.train(config, cut) == {"step": 3, "interrupted_by": signal.SIGTERM}
    monkeypatch.setattr(CitSelector, "__call__", select)
    assert loop.train(config, cut)["step"] == 4
    full, resumed = _train_records(workdir), _train_records(cut)
    for key in ("cit/score_candidates", "cit/score_selected", "cit/passed", "train/loss"):
        assert resumed[4][key] == full[4][key], key
    for a, b in zip(jax.tree.leaves(restore_params(cut)[1]),
                    jax.tree.leaves(restore_params(workdir)[1]), strict=True):
        np.testing.assert_array_equal(a, b)


def test_data_score_and_dedup_on_the_run(run, tmp_path, capsys):
    _, workdir, _ = run
    out = str(tmp_path / "scores.npz")
    assert main(["data", "score", "--workdir", workdir, "--out", out, "--batch-size", "64"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    uids, scores = uid_tables.read_scores(out)
    assert summary["count"] == len(uids) == 200 and len(set(uids.tolist())) == 200
    assert np.all(np.abs(scores) <= 1.0 + 1e-5)
    keep = str(tmp_path / "keep.txt")
    assert main(["data", "dedup", "--mode", "exact", "--workdir", workdir, "--out", keep]) == 0
    assert len(uid_tables.read_keep_list(keep)) == 200  # random fake images: no duplicates
    assert main(["data", "dedup", "--mode", "semantic", "--workdir", workdir, "--out", keep,
                 "--eps", "0.5", "--clusters", "4", "--batch-size", "64"]) == 0
    kept = uid_tables.read_keep_list(keep)
    assert 0 < len(kept) <= 200
    assert main(["data", "dedup", "--mode", "exact", "--out", keep]) == 2  # one-line error
    assert "exactly one of --workdir, --config" in capsys.readouterr().err
    jax.clear_caches()
