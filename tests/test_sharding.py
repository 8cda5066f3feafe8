"""Parameter sharding: rule matching, the FSDP dimension, and sharded training on 8 devices."""

import jax
import numpy as np
import pytest
from helpers import synthetic_batches, tiny_config
from jax.sharding import PartitionSpec as P
from test_train_step import run_steps

from contrastive_jax.checkpoints.store import Checkpointer
from contrastive_jax.config import load_config
from contrastive_jax.errors import ConfigError
from contrastive_jax.parallel.mesh import create_mesh
from contrastive_jax.parallel.sharding import (
    DEFAULT_RULES,
    fsdp_dim,
    match_rule,
    param_spec,
    parse_rules,
)
from contrastive_jax.train.init_state import create_train_state
from contrastive_jax.train.optimizer import create_optimizer

SIZES = {"data": 1, "fsdp": 1, "model": 1}


def spec(name, shape, rules=DEFAULT_RULES, min_size=1, **sizes):
    return param_spec(name, shape, parse_rules(rules), {**SIZES, **sizes}, min_size)


def test_first_matching_rule_wins():
    rules = parse_rules([[r"fc1/kernel$", [None, "model"]], [r"kernel$", ["fsdp", None]]])
    assert match_rule("img/encoder/blocks/0/mlp/fc1/kernel", rules) == (None, "model")
    assert match_rule("img/encoder/blocks/0/mlp/fc2/kernel", rules) == ("fsdp", None)
    assert match_rule("img/encoder/blocks/0/mlp/fc1/bias", rules) is None


def test_default_rules_split_heads_and_mlp_hidden_megatron_style():
    blk = "txt/encoder/blocks/3"
    assert spec(f"{blk}/attn/query/kernel", (64, 4, 16), model=2) == P(None, "model", None)
    assert spec(f"{blk}/attn/value/bias", (4, 16), model=2) == P("model", None)
    assert spec(f"{blk}/attn/out/kernel", (4, 16, 64), model=2) == P("model", None, None)
    assert spec(f"{blk}/mlp/fc1/kernel", (64, 256), model=4) == P(None, "model")
    assert spec(f"{blk}/mlp/fc1/bias", (256,), model=4) == P("model")
    assert spec(f"{blk}/mlp/fc2/kernel", (256, 64), model=4) == P("model", None)
    assert spec(f"{blk}/mlp/fc2/bias", (64,), model=4) == P(None)
    # Without a model axis, or when it does not divide the dimension, nothing is split.
    assert spec(f"{blk}/attn/query/kernel", (64, 4, 16)) == P(None, None, None)
    assert spec(f"{blk}/attn/query/kernel", (64, 3, 16), model=2) == P(None, None, None)


def test_fsdp_takes_the_largest_free_divisible_dimension():
    assert fsdp_dim((32, 64), (None, None), 4) == 1
    assert fsdp_dim((64, 64), (None, None), 4) == 0  # first on ties
    assert fsdp_dim((30, 64), (None, "model"), 4) is None  # 30 does not divide, 64 is taken
    assert fsdp_dim((50, 96), (None, None), 4) == 1
    assert fsdp_dim((12, 50), (None, None), 4) == 0  # 50 does not divide
    # Combined with tensor parallelism: fsdp goes to a dimension the rule left free.
    assert spec("a/mlp/fc1/kernel", (32, 64), model=2, fsdp=2) == P("fsdp", "model")
    assert spec("a/attn/query/kernel", (32, 2, 16), model=2, fsdp=2) == P("fsdp", "model", None)
    # Small params and scalars stay replicated.
    assert spec("a/mlp/fc1/kernel", (32, 64), min_size=4096, fsdp=4) == P(None, None)
    assert spec("t_log", (), fsdp=4) == P()


def test_bad_rules_are_config_errors(tmp_path):
    with pytest.raises(ValueError, match="3 entries"):
        spec("a/mlp/fc1/kernel", (32, 64), rules=[["fc1", [None, None, "model"]]])
    with pytest.raises(ValueError, match="unknown mesh axes"):
        spec("a/mlp/fc1/kernel", (32, 64), rules=[["fc1", [None, "tensor"]]])
    path = tmp_path / "c.py"
    path.write_text("def get_config():\n    return {'mesh': {'rules': [['(', [None]]]}}\n")
    with pytest.raises(ConfigError, match="mesh.rules"):
        load_config(str(path))


def sharded_config(data, fsdp, model):
    return tiny_config(mesh={"data": data, "fsdp": fsdp, "model": model, "fsdp_min_size": 256})


@pytest.fixture(scope="module")
def one_device_run():
    config = sharded_config(1, 1, 1)
    batches = synthetic_batches(10, config.train.batch_size)
    state, history = run_steps(config, jax.devices()[:1], batches)
    return batches, jax.device_get(state.params), [m["train/loss"] for m in history]


def block(tree, tower="img"):
    return tree[tower]["encoder"]["blocks"][0]


@pytest.mark.parametrize("layout", [(8, 1, 1), (2, 4, 1), (2, 2, 2)])
def test_sharded_layouts_train_like_one_device(layout, one_device_run):
    batches, params1, losses1 = one_device_run
    state, history = run_steps(sharded_config(*layout), jax.devices()[:8], batches)
    np.testing.assert_allclose([m["train/loss"] for m in history], losses1, rtol=1e-5)
    flat1 = jax.tree_util.tree_leaves_with_path(params1)
    for (path, a), b in zip(flat1, jax.tree.leaves(jax.device_get(state.params)), strict=True):
        name = jax.tree_util.keystr(path)
        if "['key']['bias']" in name:
            continue  # zero exact gradient: Adam amplifies rounding noise (test_train_step)
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-6, err_msg=name)

    _, fsdp, model = layout
    adam = state.opt_state[1][0]  # chain(clip, adamw(scale_by_adam, ...)) -> ScaleByAdamState
    for tree in (state.params, adam.mu, adam.nu):
        fc1, fc2 = block(tree)["mlp"]["fc1"]["kernel"], block(tree)["mlp"]["fc2"]["kernel"]
        query = block(tree, "txt")["attn"]["query"]["kernel"]  # [32, 2 heads, 16]
        if layout == (8, 1, 1):
            assert fc1.sharding.spec == P(None, None) and fc1.sharding.is_fully_replicated
        if layout == (2, 4, 1):
            assert fc2.sharding.spec == P("fsdp", None)  # [64, 32]: rows split 4 ways
            assert fc2.addressable_shards[0].data.shape == (16, 32)
            assert fc1.sharding.spec == P(None, "fsdp")
            assert fc1.addressable_shards[0].data.shape == (32, 16)
        if layout == (2, 2, 2):
            assert fc1.sharding.spec == P("fsdp", "model")
            assert fc1.addressable_shards[0].data.shape == (16, 32)
            assert fc2.sharding.spec == P("model", "fsdp")
            assert query.sharding.spec == P("fsdp", "model", None)
            assert query.addressable_shards[0].data.shape == (16, 1, 16)
        assert tree["t_log"].sharding.is_fully_replicated
    assert adam.count.sharding.is_fully_replicated and state.step.sharding.is_fully_replicated


def test_sharded_state_saves_and_restores(tmp_path):
    config = sharded_config(2, 4, 1)
    config.train.checkpoint_every = 1
    batches = synthetic_batches(2, config.train.batch_size)
    state, _ = run_steps(config, jax.devices()[:8], batches)
    checkpointer = Checkpointer(str(tmp_path), config)
    checkpointer.save(state, examples_seen=32, force=True)
    checkpointer.close()

    mesh = create_mesh(config.mesh)
    tx, _ = create_optimizer(config.optimizer, config.train.steps)
    fresh, shardings = create_train_state(config, tx, mesh)
    checkpointer = Checkpointer(str(tmp_path), config)
    restored, meta = checkpointer.restore(fresh, shardings)
    checkpointer.close()
    assert int(restored.step) == 2 and meta["examples_seen"] == 32
    for a, b, s in zip(jax.tree.leaves(state), jax.tree.leaves(restored),
                       jax.tree.leaves(shardings), strict=True):
        np.testing.assert_array_equal(jax.device_get(b), jax.device_get(a))
        assert b.sharding.spec == s.spec
    kernel = block(restored.opt_state[1][0].mu)["mlp"]["fc2"]["kernel"]
    assert kernel.addressable_shards[0].data.shape == (16, 32)
