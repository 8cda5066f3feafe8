"""LiT locking: locked params get no optimizer state, no gradient and no backward pass."""

import math
import re

import jax
import ml_collections
import numpy as np
import optax
import pytest
from helpers import synthetic_batches, tiny_config

from contrastive_jax.bench.flops import compiled_flops
from contrastive_jax.models.state import ModelDef
from contrastive_jax.parallel.mesh import create_mesh, to_global
from contrastive_jax.parallel.sharding import path_name
from contrastive_jax.train.init_state import create_train_state
from contrastive_jax.train.lock import (
    check_lock,
    check_patterns,
    lock_patterns,
    merge_params,
    param_names,
    split_params,
)
from contrastive_jax.train.optimizer import create_optimizer
from contrastive_jax.train.step import train_step_from_config

LOCK_IMAGE = {"locked": {"image": True}}


def _lock(**kw):
    return ml_collections.ConfigDict(dict({"image": False, "text": False, "patterns": ()}, **kw))


def _build(config, tx=None, devices=1):
    mesh = create_mesh(config.mesh, devices=jax.devices()[:devices])
    tx = tx or create_optimizer(config.optimizer, config.train.steps)[0]
    state, shardings = create_train_state(config, tx, mesh)
    return mesh, state, train_step_from_config(config, mesh, tx, shardings)


def _flat(tree):
    return {path_name(p): np.asarray(v) for p, v in jax.tree_util.tree_leaves_with_path(tree)}


def test_patterns_split_and_merge():
    params, _ = ModelDef.init(tiny_config().model, jax.random.key(0))
    names = param_names(params)
    patterns = lock_patterns(_lock(image=True, patterns=(r"^txt/encoder/blocks/0/mlp/",)))
    trainable, locked = split_params(params, patterns)
    locked_names = set(param_names(locked))
    assert locked_names == {n for n in names if n.startswith(("img/", "img_head/"))
                            or n.startswith("txt/encoder/blocks/0/mlp/")}
    assert set(param_names(trainable)) == set(names) - locked_names
    assert {"t_log", "b"} <= set(param_names(trainable))  # t and b stay trainable
    merged = merge_params(trainable, locked)
    assert jax.tree.structure(merged) == jax.tree.structure(params)
    # No lock: the optimizer sees exactly the old params tree (old checkpoints restore).
    everything, nothing = split_params(params, ())
    assert jax.tree.structure(everything) == jax.tree.structure(params) and not nothing


def test_bad_patterns_are_one_line_errors():
    params, _ = ModelDef.init(tiny_config().model, jax.random.key(0))
    with pytest.raises(ValueError, match="matches no parameter"):
        check_patterns(params, ("^image/",))
    with pytest.raises(ValueError, match="bad regex"):
        check_patterns(params, ("img/(",))
    with pytest.raises(ValueError, match="locks every parameter"):
        check_patterns(params, (".",))


def test_a_tower_shorthand_locks_the_head_only_where_there_is_one():
    """SigLIP's MAP image tower has no projection head: `locked.image` locks the tower alone
    (no error), a model with a head gets it locked too, and a missing tower is one line."""
    for head in (True, False):
        config = tiny_config(model={"embed_dim": 32, "image": {"pool": "map", "head": head}})
        params, _ = ModelDef.init(config.model, jax.random.key(0))
        check_lock(params, _lock(image=True))
        _, locked = split_params(params, lock_patterns(_lock(image=True)))
        tops = {n.split("/")[0] for n in param_names(locked)}
        assert tops == ({"img", "img_head"} if head else {"img"})
    # `params` has no image head now: a pattern the user wrote for it is still refused.
    with pytest.raises(ValueError, match=r"pattern '\^img_head/' matches no parameter"):
        check_lock(params, _lock(patterns=("^img_head/",)))
    with pytest.raises(ValueError, match="'train.locked.text': this model has no text tower"):
        check_lock({"img": {"k": np.zeros(1)}, "b": np.zeros(())}, _lock(text=True))
    with pytest.raises(ValueError, match="'train.locked' locks every parameter"):
        check_lock({"img": {"k": np.zeros(1)}}, _lock(image=True))


@pytest.fixture(scope="module")
def adam_runs():
    """Two AdamW steps with a locked image tower, without and with GradCache (k=2)."""
    batches = synthetic_batches(2, 16, seed=5)
    runs = {}
    for k in (1, 2):
        config = tiny_config(train={**LOCK_IMAGE, "microbatches": k})
        mesh, state, step = _build(config, devices=2)
        # Shapes only: the step donates the state's buffers.
        runs["state0"] = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), state)
        runs["before"] = _flat(state.params)
        for batch in batches:
            state, metrics = step(state, to_global(batch, mesh))
        runs[k] = (_flat(state.params), float(metrics["train/loss"]))
    return runs


def test_locked_params_have_no_optimizer_state(adam_runs):
    state = adam_runs["state0"]
    opt = [path_name(p) for p, _ in jax.tree_util.tree_leaves_with_path(state.opt_state)]
    assert opt and not [n for n in opt if n.startswith(("img/", "img_head/"))]
    # Adam holds mu and nu per trainable leaf: twice the trainable params, plus counters.
    trainable, locked = split_params(state.params, lock_patterns(_lock(image=True)))
    size = lambda tree: sum(math.prod(x.shape) for x in jax.tree.leaves(tree))  # noqa: E731
    assert size(state.opt_state) - 2 * size(trainable) < 10
    _, free_state, _ = _build(tiny_config())
    assert size(free_state.opt_state) - size(state.opt_state) == 2 * size(locked)


def test_locked_params_are_bit_identical_after_steps(adam_runs):
    """AdamW with weight decay: locked params stay bit-identical, the others move."""
    before, (after, loss) = adam_runs["before"], adam_runs[1]
    assert np.isfinite(loss)
    for name in before:
        if name.startswith(("img/", "img_head/")):
            np.testing.assert_array_equal(after[name], before[name], err_msg=name)
        elif not name.endswith("key/bias"):  # softmax ignores the key bias: zero gradient
            assert not np.array_equal(after[name], before[name]), name


def test_grad_cache_respects_the_lock(adam_runs):
    (p1, l1), (p2, l2) = adam_runs[1], adam_runs[2]
    np.testing.assert_allclose(l2, l1, rtol=1e-5)
    for name in p1:
        if not name.endswith("key/bias"):
            np.testing.assert_allclose(p2[name], p1[name], rtol=1e-4, atol=1e-6, err_msg=name)


@pytest.fixture(scope="module")
def sgd_steps():
    """One plain-SGD step (lr 1, so new - old = -gradient) locked and free, with the
    compiled step's FLOPs; the image tower is the bigger one here."""
    model = {"image": {"width": 64, "depth": 2, "mlp_dim": 256}}
    batch = synthetic_batches(1, 16, seed=3)[0]
    out = {}
    for name, section in (("locked", LOCK_IMAGE), ("free", {})):
        config = tiny_config(model=model, train=section)
        mesh, state, step = _build(config, tx=optax.sgd(1.0))
        before = _flat(state.params)
        compiled = step.lower(state, to_global(batch, mesh)).compile()
        after = _flat(compiled(state, to_global(batch, mesh))[0].params)
        out[name] = ({k: after[k] - before[k] for k in before}, compiled_flops(compiled))
    params, rest = ModelDef.init(config.model, jax.random.key(0))
    model_def = ModelDef(config.model)
    forward = jax.jit(lambda p, x: model_def.bind(p, rest).encode_image(x))
    out["image_forward"] = compiled_flops(forward.lower(params, batch["image"]).compile())
    return out


def test_trainable_gradients_equal_the_unlocked_ones(sgd_steps):
    (locked, _), (free, _) = sgd_steps["locked"], sgd_steps["free"]
    for k, g in free.items():
        if k.startswith(("img/", "img_head/")):
            assert not locked[k].any() and g.any(), k
        else:
            np.testing.assert_allclose(locked[k], g, rtol=1e-5, atol=1e-7, err_msg=k)


def test_locked_step_builds_no_image_backward(sgd_steps):
    """XLA's FLOP count: the locked-image step saves about the image tower's backward,
    i.e. about twice its forward cost, so it runs the image tower forward only."""
    saved = sgd_steps["free"][1] - sgd_steps["locked"][1]
    image_forward = sgd_steps["image_forward"]
    assert 1.7 * image_forward < saved < 2.3 * image_forward, (saved, image_forward)


@pytest.mark.parametrize("override, message", [
    ("train.locked.patterns=['img/(']", "bad regex"),
    ("train.init_from.tower=images", "train.init_from.tower"),
    ("train.init_from.reinit=['(']", "train.init_from.reinit"),
    ("data.flip=True", "data.flip=False"),
])
def test_lit_config_errors_are_one_line(override, message):
    from contrastive_jax.config import load_config
    from contrastive_jax.errors import ConfigError

    overrides = ["train.embedding_cache.enabled=True", override]
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config("configs/demo_siglip.py", overrides)
