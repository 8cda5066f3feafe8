"""`model.scan_layers`: the scanned towers are the unscanned ones with restacked params."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import synthetic_batches, tiny_config

from contrastive_jax.models.layer_stack import is_stacked, stack_layers, unstack_layers
from contrastive_jax.models.state import ModelDef, TrainState, state_shardings
from contrastive_jax.parallel.mesh import create_mesh, to_global
from contrastive_jax.parallel.sharding import DEFAULT_RULES, param_spec, parse_rules
from contrastive_jax.train.lock import lock_patterns, split_params
from contrastive_jax.train.optimizer import create_optimizer
from contrastive_jax.train.step import train_step_from_config


def _config(scan: bool, remat: str = "none", **sections):
    config = tiny_config(**sections)
    config.model.scan_layers = scan
    config.model.remat = remat
    config.model.image.depth = 3
    config.model.image.pool = "map"  # the MAP head sits after the scanned blocks
    config.model.text.depth = 2
    return config


def _leaves(tree) -> dict:
    return {jax.tree_util.keystr(p): v for p, v in jax.tree_util.tree_leaves_with_path(tree)}


def _flat(tree) -> dict:
    return {k: np.asarray(v) for k, v in _leaves(tree).items()}


@pytest.fixture(scope="module")
def unscanned_params():
    params, _ = ModelDef.init(_config(False).model, jax.random.key(0))
    return jax.device_get(params)


def test_stacked_layout_shapes_and_round_trip(unscanned_params):
    scanned, _ = jax.eval_shape(lambda: ModelDef.init(_config(True).model, jax.random.key(0)))
    stacked = stack_layers(unscanned_params)
    assert is_stacked(stacked["img"]["encoder"]["blocks"])
    assert stacked["img"]["encoder"]["blocks"]["mlp"]["fc1"]["kernel"].shape == (3, 32, 64)
    assert stacked["txt"]["encoder"]["blocks"]["ln1"]["scale"].shape == (2, 32)
    shapes = {jax.tree_util.keystr(p): v.shape
              for p, v in jax.tree_util.tree_leaves_with_path(scanned)}
    assert {k: v.shape for k, v in _flat(stacked).items()} == shapes
    back = unstack_layers(stacked)
    assert _flat(back).keys() == _flat(unscanned_params).keys()
    for k, v in _flat(unscanned_params).items():
        np.testing.assert_array_equal(_flat(back)[k], v)


def test_scanned_equals_unscanned_outputs_and_gradients(unscanned_params, remat="dots_saveable"):
    batch = synthetic_batches(1, 8)[0]
    images, tokens = jnp.asarray(batch["image"]), jnp.asarray(batch["text"])

    def loss_and_grads(scan: bool, params):
        model_def = ModelDef(_config(scan, remat).model)

        def loss(p):
            zimg, ztxt = model_def.bind(p)(images, tokens)
            # Asymmetric in the two towers, and nonlinear, so every block gets a gradient.
            return jnp.sum(jnp.tanh(3 * zimg @ ztxt.T) * jnp.arange(8.0)), (zimg, ztxt)

        (value, outs), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(params)
        return value, outs, grads

    v0, (zi0, zt0), g0 = loss_and_grads(False, unscanned_params)
    v1, (zi1, zt1), g1 = loss_and_grads(True, stack_layers(unscanned_params))
    np.testing.assert_allclose(zi1, zi0, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(zt1, zt0, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(v1, v0, rtol=1e-5)
    g1, g0 = _flat(unstack_layers(jax.device_get(g1))), _flat(jax.device_get(g0))
    assert g1.keys() == g0.keys()
    for k in g0:
        if "['key']['bias']" in k:
            continue  # softmax is invariant to it: the exact gradient is 0, both are noise
        # float32 sums in a different order: tolerance relative to the gradient's scale.
        scale = float(np.abs(g0[k]).max()) + 1e-12
        np.testing.assert_allclose(g1[k], g0[k], rtol=1e-4, atol=1e-5 * scale, err_msg=k)
    assert np.abs(g0["['img']['encoder']['blocks'][0]['mlp']['fc1']['kernel']"]).max() > 0


def test_hf_state_dict_of_stacked_params_is_per_layer(unscanned_params):
    from contrastive_jax.export.hf import siglip_state_dict

    ref = siglip_state_dict(unscanned_params, 16)
    got = siglip_state_dict(stack_layers(unscanned_params), 16)
    assert got.keys() == ref.keys()
    assert "vision_model.encoder.layers.2.mlp.fc1.weight" in got
    for k in ref:
        np.testing.assert_array_equal(got[k], ref[k], err_msg=k)


def test_stacked_params_shard_like_their_layers():
    rules, axes = parse_rules(DEFAULT_RULES), {"data": 2, "fsdp": 2, "model": 2}
    for leaf, shape in [("attn/query/kernel", (64, 4, 16)), ("mlp/fc1/kernel", (128, 512)),
                        ("mlp/fc2/bias", (64,)), ("ln1/scale", (64,))]:
        per_layer = param_spec(f"img/encoder/blocks/0/{leaf}", shape, rules, axes, 2**14)
        stacked = param_spec(f"img/encoder/blocks/{leaf}", (12, *shape), rules, axes, 2**14)
        assert tuple(stacked) == (None, *per_layer), leaf


def _run(config, params, batches, devices):
    mesh = create_mesh(config.mesh, devices=devices)
    tx, _ = create_optimizer(config.optimizer, config.train.steps)
    _, rest = jax.eval_shape(lambda: ModelDef.init(config.model, jax.random.key(0)))
    assert not rest  # no model state besides params here

    # The state create_train_state builds (same tree, same state_shardings), but holding
    # `params`: only the optimizer's init is compiled, not the model's random init on the
    # mesh, whose params would be replaced at once.
    def init(p):
        trainable, _ = split_params(p, lock_patterns(config.train.locked))
        return TrainState(step=jnp.zeros((), jnp.int32), params=p, rest={},
                          opt_state=tx.init(trainable))

    shardings = state_shardings(jax.eval_shape(init, params), mesh, config.mesh)
    state = jax.jit(init, out_shardings=shardings)(params)
    step = train_step_from_config(config, mesh, tx, shardings)
    losses = []
    for batch in batches:
        state, metrics = step(state, to_global(batch, mesh))
        losses.append(float(metrics["train/loss"]))
    specs = {k: tuple(v.sharding.spec) for k, v in _leaves(state.params).items()}
    return losses, jax.device_get(state.params), specs


def test_scanned_train_steps_on_8_device_mesh_match_unscanned(unscanned_params):
    """data x fsdp x model = 2 x 2 x 2, fsdp_min_size 0: stacked params really get split.

    (This step deadlocked XLA:CPU in half the runs until the pool had two threads per
    device; see contrastive_jax/cpu_host.py.)
    """
    mesh = {"data": 2, "fsdp": 2, "model": 2, "fsdp_min_size": 0}
    batches = synthetic_batches(3, 16, seed=3)
    devices = jax.devices()[:8]
    ref, ref_params, _ = _run(_config(False, mesh=mesh), unscanned_params, batches, devices)
    got, got_params, specs = _run(_config(True, "full", mesh=mesh),
                                  stack_layers(unscanned_params), batches, devices)
    fc1 = [spec for k, spec in specs.items() if "['blocks']['mlp']['fc1']['kernel']" in k]
    assert fc1 and all(spec[0] is None and {"fsdp", "model"} <= set(spec[1:]) for spec in fc1)
    np.testing.assert_allclose(got, ref, rtol=1e-5)
    assert ref[-1] < ref[0]
    got_flat, ref_flat = _flat(unstack_layers(got_params)), _flat(ref_params)
    for k in ref_flat:
        if "['key']['bias']" in k:
            continue  # exact gradient 0: Adam amplifies rounding noise (see test_train_step)
        np.testing.assert_allclose(got_flat[k], ref_flat[k], rtol=1e-4, atol=1e-6, err_msg=k)
