"""NaFlex training (`data.naflex`): the config's refusals, a stream of images at their own
aspect ratio with one budget per global batch (the same on every process), and an
interrupted two-budget run resumed bit-exact."""

import itertools
import json
import os

import jax
import numpy as np
import pytest
import tensorflow as tf
from helpers import tiny_config, train_cut_and_resumed
from PIL import Image

from contrastive_jax.checkpoints.store import restore_params
from contrastive_jax.config.checks import validate
from contrastive_jax.data import naflex_stream
from contrastive_jax.data.naflex import target_size
from contrastive_jax.data.stream import train_dataset
from contrastive_jax.data.tokenizer_setup import ensure_tokenizer
from contrastive_jax.errors import ConfigError
from contrastive_jax.train import loop

# (h, w) of the table's images: 1:3 to 3:1, and one smaller than a 7-pixel patch.
SIZES = [(14, 42), (42, 14), (28, 28), (21, 35), (3, 5), (35, 21), (7, 28), (28, 7)]
PATCH, BUDGETS = 7, (4, 16)


@pytest.fixture(scope="module")
def table(tmp_path_factory) -> str:
    """64 grey PNGs of the SIZES with captions, as a table source; label: the size's index."""
    root = tmp_path_factory.mktemp("naflex_table")
    rng = np.random.default_rng(0)
    lines = ["image,caption,uid,label"]
    for i in range(64):
        h, w = SIZES[i % len(SIZES)]
        Image.fromarray(rng.integers(0, 256, (h, w), dtype=np.uint8)).save(root / f"{i}.png")
        lines.append(f"{i}.png,a photo of thing {i % 5},u{i},{i % len(SIZES)}")
    (root / "t.csv").write_text("\n".join(lines) + "\n")
    return str(root / "t.csv")


def naflex_config(table, **sections):
    data = {"sources": ({"kind": "table", "path": table},), "channels": 1,
            "tokenizer": {"vocab_size": 64}, "shuffle_buffer": 16,
            "naflex": {"budgets": BUDGETS, "weights": (1, 2)}, **sections.pop("data", {})}
    config = tiny_config(model={"image": {"naflex": True, "pool": "map"}}, data=data,
                         **sections)
    config.evals.tasks = ()
    return config


def test_config_refuses_what_a_patch_batch_cannot_take(table):
    validate(naflex_config(table))
    bad = [
        ({"model.image.naflex": False}, "needs 'model.image.naflex=True'"),
        ({"data.naflex.budgets": (4, 16 * 16 + 1)}, r"budgets\[1\]=257 is more than 16x"),
        ({"data.naflex.budgets": (0,)}, "positive number of patches"),
        ({"data.naflex.weights": (1,)}, "2 positive numbers"),
        ({"data.naflex.budgets": (), "data.naflex.weights": ()}, None),
        ({"data.naflex.budgets": (), "data.naflex.weights": (1.0,)}, "needs 'data.naflex."),
        ({"train.cit.enabled": True}, "'train.cit.enabled' does not combine"),
        ({"train.mixup.enabled": True}, "'train.mixup.enabled' does not combine"),
    ]
    for overrides, message in bad:
        config = naflex_config(table)
        for key, value in overrides.items():
            group, name = key.rsplit(".", 1)
            node = config
            for part in group.split("."):
                node = node[part]
            node[name] = value
        if message is None:
            validate(config)
            continue
        with pytest.raises(ConfigError, match=message):
            validate(config)


def _batches(config, tmp_path, n, **kwargs):
    tokenizer = ensure_tokenizer(config.data, str(tmp_path))
    ds = train_dataset(config.data, tokenizer, seed=3, naflex_patch=PATCH, **kwargs)
    return list(itertools.islice(ds.as_numpy_iterator(), n))


def test_stream_keeps_each_aspect_with_one_budget_per_batch_on_every_process(table, tmp_path):
    """Batches of images at their own aspect, the budget drawn for each; a resume at batch
    3 and two processes' halves give the same batches."""
    config = naflex_config(table)
    batches = _batches(config, tmp_path, 6, global_batch_size=16)
    schedule = naflex_stream.budget_schedule(config.data, 3, 0, 6)
    assert set(schedule) == set(BUDGETS)  # both budgets occur in six batches
    grids = {budget: {tuple(int(v) for v in target_size(h, w, PATCH, budget).numpy() // PATCH)
                      for h, w in SIZES} for budget in BUDGETS}
    for batch, budget in zip(batches, schedule, strict=True):
        assert "image" not in batch
        assert batch[naflex_stream.PATCHES].shape == (16, budget, PATCH * PATCH)
        shapes = batch[naflex_stream.SHAPE]
        assert {tuple(s) for s in shapes} <= grids[budget]  # no image squashed to a square
        np.testing.assert_array_equal(batch[naflex_stream.MASK].sum(1), shapes.prod(1))
        assert np.abs(batch[naflex_stream.PATCHES]).max() <= 1.0  # data.value_range
    # The 3 x 5 images (label 4) are enlarged and flagged, not dropped; only they.
    for batch in batches:
        np.testing.assert_array_equal(batch[naflex_stream.ENLARGED], batch["label"] == 4)
    assert sum(int(b[naflex_stream.ENLARGED].sum()) for b in batches) > 0
    # A stream resumed at batch 3 (48 examples read) serves batches 3, 4, 5 exactly.
    resumed = _batches(config, tmp_path, 3, global_batch_size=16, start_example=48)
    for a, b in zip(resumed, batches[3:], strict=True):
        for key in (*naflex_stream.KEYS, "text"):
            np.testing.assert_array_equal(a[key], b[key])
    # Two processes, built independently, serve the halves of the same global batches.
    halves = [_batches(config, tmp_path, 6, global_batch_size=16, process_index=p,
                       process_count=2) for p in range(2)]
    for whole, first, second in zip(batches, *halves, strict=True):
        for key in naflex_stream.KEYS[:3]:
            np.testing.assert_array_equal(np.concatenate([first[key], second[key]]), whole[key])


def test_budget_draw_is_a_function_of_seed_and_batch():
    config = tiny_config(data={"naflex": {"budgets": (4, 16, 64)}})
    a = naflex_stream.budget_schedule(config.data, 5, 0, 40)
    np.testing.assert_array_equal(naflex_stream.budget_schedule(config.data, 5, 10, 30), a[10:])
    assert not np.array_equal(naflex_stream.budget_schedule(config.data, 6, 0, 40), a)
    drawn = naflex_stream.budget_index([1.0, 3.0], tf.constant(5, tf.int64),
                                       tf.constant(7, tf.int64))
    assert int(drawn) in (0, 1)


def _rows(batches, key="text"):
    return np.concatenate([b[key] for b in batches])


def test_token_budget_batches_and_their_resume(table, tmp_path):
    """tokens_per_batch=128 at budgets 4 and 16: 32 and 8 images (open_clip's floor rule,
    multiples of the unit 4), the same examples in the same order as fixed batches; a
    stream started at batch 3 (its examples read so far) continues exactly."""
    assert naflex_stream.token_batch_sizes(BUDGETS, 128, 4) == [32, 8]
    assert naflex_stream.token_batch_sizes(BUDGETS, 100, 4) == [24, 4]
    with pytest.raises(ConfigError, match="holds no batch at budget 16: .* at least 64"):
        naflex_stream.token_batch_sizes(BUDGETS, 60, 4)
    config = naflex_config(table, data={"logical_streams": 1})
    sizes = [32, 8]
    token = _batches(config, tmp_path, 6, global_batch_size=8, naflex_batch_sizes=sizes)
    schedule = naflex_stream.budget_schedule(config.data, 3, 0, 6)
    assert [len(b["text"]) for b in token] == [sizes[BUDGETS.index(n)] for n in schedule]
    for batch, budget in zip(token, schedule, strict=True):
        assert batch[naflex_stream.PATCHES].shape[1] == budget
    fixed = _batches(config, tmp_path, len(_rows(token)) // 8,
                     global_batch_size=8)
    np.testing.assert_array_equal(_rows(fixed), _rows(token))  # order kept, none dropped
    read = sum(len(b["text"]) for b in token[:3])
    resumed = _batches(config, tmp_path, 3, global_batch_size=8, naflex_batch_sizes=sizes,
                       start_example=read, start_step=3)
    for a, b in zip(resumed, token[3:], strict=True):
        for key in (*naflex_stream.KEYS, "text"):
            np.testing.assert_array_equal(a[key], b[key])


def test_two_budget_token_run_interrupted_and_resumed_is_exact(table, tmp_path, monkeypatch):
    """The loop with token-budget batching (its batch sizes vary with the budget): cut by
    SIGTERM at step 2 and resumed, bit-exact with the unbroken run."""
    config = naflex_config(table, train={"steps": 4, "checkpoint_every": 2},
                           data={"logical_streams": 2})
    config.data.naflex.tokens_per_batch = 128  # 8 batch shards: 32 images at 4, 8 at 16
    config.seed = 7  # budgets 16, 4 | 4, 16: both before and after the cut at step 2
    schedule = naflex_stream.budget_schedule(config.data, config.seed, 0, 4)
    assert list(schedule) == [16, 4, 4, 16]
    full, cut = str(tmp_path / "full"), str(tmp_path / "cut")
    loop.train(config, full)
    assert train_cut_and_resumed(config, cut, monkeypatch, 2)["step"] == 4
    for a, b in zip(jax.tree.leaves(restore_params(cut)[1]),
                    jax.tree.leaves(restore_params(full)[1]), strict=True):
        np.testing.assert_array_equal(a, b)
    with open(os.path.join(full, "metrics.jsonl"), encoding="utf-8") as f:
        rows = [r for r in map(json.loads, f) if "train/loss" in r]
    assert [r["train/batch_size"] for r in rows] == [8, 32, 32, 8]
    assert [r["data/seen"] for r in rows] == [8, 40, 72, 80]
    assert rows[-1]["data/enlarged_smaller_than_patch"] > 0  # the 3 x 5 images, counted


def test_grad_cache_on_a_patch_batch_is_the_full_batch_gradient():
    """GradCache (train.microbatches) splits a NaFlexImages batch (patches, mask, grids)
    like any image batch: the full-batch value and gradient, on 4 devices."""
    from test_grad_cache import _assert_close, _full_value_and_grad

    from contrastive_jax.losses import loss_from_config
    from contrastive_jax.models.naflex import NaFlexImages
    from contrastive_jax.models.state import ModelDef
    from contrastive_jax.parallel.mesh import create_mesh, to_global
    from contrastive_jax.train.grad_cache import grad_cache_value_and_grad

    config = tiny_config(model={"image": {"naflex": True, "pool": "map"}},
                         loss={"name": "sigmoid_chunked"})
    mesh = create_mesh(config.mesh, devices=jax.devices()[:4])
    model_def, loss_fn = ModelDef(config.model), loss_from_config(config, mesh)
    params, rest = ModelDef.init(config.model, jax.random.key(0))
    rng = np.random.default_rng(0)
    grids = rng.integers(1, 5, size=(16, 2)).astype(np.int32)
    local = {"patches": rng.uniform(-1, 1, (16, 16, PATCH * PATCH)).astype(np.float32),
             "mask": (np.arange(16)[None] < grids.prod(1)[:, None]).astype(np.int32),
             "shapes": grids, "text": rng.integers(3, 64, (16, 8)).astype(np.int32)}
    batch = to_global(local, mesh)
    image = NaFlexImages(batch["patches"], batch["mask"], batch["shapes"])

    @jax.jit
    def both(params, image, text):
        return (_full_value_and_grad(model_def, loss_fn, params, rest, image, text, None),
                grad_cache_value_and_grad(model_def, loss_fn, params, rest, image, text, None,
                                          2, mesh))

    ((loss_full, _), g_full), ((loss_gc, _), g_gc) = jax.device_get(
        both(params, image, batch["text"]))
    np.testing.assert_allclose(loss_gc, loss_full, rtol=1e-6)
    _assert_close(g_gc, g_full)


def test_bench_step_times_one_row_per_budget_at_its_token_batch_size():
    """`bench step` with `data.naflex.budgets`: one config per budget, each a patch batch of
    that budget; with tokens_per_batch, each at the loop's batch size (8 batch shards)."""
    from contrastive_jax.bench.train_step import per_budget, synthetic_batch

    config = tiny_config(model={"image": {"naflex": True, "pool": "map"}},
                         data={"naflex": {"budgets": (4, 16), "tokens_per_batch": 256}})
    ones = per_budget(config)
    assert [(tuple(c.data.naflex.budgets), c.train.batch_size) for c in ones] == [
        ((4,), 64), ((16,), 16)]
    batch = synthetic_batch(ones[1], 16)
    assert batch[naflex_stream.PATCHES].shape == (16, 16, PATCH * PATCH)
    np.testing.assert_array_equal(batch[naflex_stream.SHAPE], [[4, 4]] * 16)
    assert batch[naflex_stream.MASK].sum() == 16 * 16 and "image" not in batch
