"""Compiled memory: GradCache and rematerialisation lower temporary bytes, change nothing else."""

import functools

import jax
import numpy as np
import pytest
from helpers import synthetic_batches, tiny_config
from test_grad_cache import _full_value_and_grad

from contrastive_jax.losses import create_loss
from contrastive_jax.models.state import ModelDef
from contrastive_jax.train.grad_cache import grad_cache_value_and_grad


def activation_heavy_config(remat: str = "none"):
    """Deep and wide enough that activations, not parameters, dominate memory."""
    tower = {"variant": None, "width": 64, "depth": 4, "mlp_dim": 256, "num_heads": 4}
    return tiny_config(model={
        "remat": remat,
        "image": {**tower, "patch_size": 4, "image_size": 28, "channels": 1, "pool": "gap"},
        "text": {**tower, "vocab_size": 64, "max_len": 8},
    })


@functools.cache
def _params() -> tuple[dict, dict]:
    """The towers' params, initialised once for every test here: every config here has the
    same towers (remat changes what is saved for the backward pass, not the params), and
    the batch size is no part of them."""
    return ModelDef.init(activation_heavy_config().model, jax.random.key(0))


def _inputs(config, batch_size):
    params, rest = _params()
    batch = synthetic_batches(1, batch_size)[0]
    return params, rest, batch


def _grad_fn(config, rest, k):
    model_def, loss_fn = ModelDef(config.model), create_loss("sigmoid")
    if k == 1:
        return lambda p, img, txt: _full_value_and_grad(model_def, loss_fn, p, rest, img, txt,
                                                        None)
    return lambda p, img, txt: grad_cache_value_and_grad(model_def, loss_fn, p, rest, img, txt,
                                                         None, k)


def temp_bytes(config, batch_size: int, k: int) -> int:
    params, rest, batch = _inputs(config, batch_size)
    compiled = jax.jit(_grad_fn(config, rest, k)).lower(
        params, batch["image"], batch["text"]).compile()
    return compiled.memory_analysis().temp_size_in_bytes


def test_grad_cache_memory_is_one_micro_batch():
    config = activation_heavy_config()
    full = temp_bytes(config, 64, 1)
    one_micro = temp_bytes(config, 16, 1)
    cached = temp_bytes(config, 64, 4)
    assert cached < 0.5 * full, (cached, full)
    # One micro-batch's activations plus the parameter-sized gradient accumulator.
    assert cached < 1.5 * one_micro, (cached, one_micro)


@functools.cache
def residual_bytes(remat: str, batch_size: int) -> int:
    """Bytes of the forward-pass values JAX saves for the backward pass of the loss (once
    per remat policy: the plain model's is shared by both remat tests)."""
    config = activation_heavy_config(remat)
    params, rest, batch = _inputs(config, batch_size)
    model_def, loss_fn = ModelDef(config.model), create_loss("sigmoid")

    def loss(p):
        model = model_def.bind(p, rest)
        zimg, ztxt = model(batch["image"], batch["text"])
        return loss_fn(zimg, ztxt, model.temperature(), model.bias())[0]

    # jax.vjp's backward function is a pytree whose leaves are exactly those values. Traced
    # (eval_shape), not run op by op: the same residuals' shapes, without compiling and
    # running every primitive of the forward pass eagerly (~15 s of this file on 2 cores).
    backward = jax.eval_shape(lambda p: jax.vjp(loss, p)[1], params)
    return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(backward))


@pytest.mark.parametrize("remat", ["full", "dots_saveable"])
def test_remat_same_loss_and_grads_fewer_saved_activations(remat):
    """XLA's CPU compiler schedules the recomputation early and so reports the same temp
    bytes with or without remat (jax-ml/jax#19822); the saving shows in what JAX keeps
    for the backward pass, which is what accelerators' memory follows."""
    rematted = activation_heavy_config(remat)
    params, rest, batch = _inputs(rematted, 32)
    l0, g0 = _plain_loss_and_grads()
    (l1, _), g1 = jax.jit(_grad_fn(rematted, rest, 1))(params, batch["image"], batch["text"])
    np.testing.assert_allclose(l1, l0, rtol=1e-6)
    # Recomputed blocks fuse differently: float32 rounding apart (gradients are O(1)).
    for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g0), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert residual_bytes(remat, 32) < 0.6 * residual_bytes("none", 32)


@functools.cache
def _plain_loss_and_grads():
    """Loss and grads without remat, the reference of both remat tests, computed once."""
    plain = activation_heavy_config()
    params, rest, batch = _inputs(plain, 32)
    (loss, _), grads = jax.jit(_grad_fn(plain, rest, 1))(params, batch["image"], batch["text"])
    return loss, grads


def test_unknown_remat_policy_is_an_error():
    with pytest.raises(ValueError, match="unknown remat"):
        ModelDef(activation_heavy_config("sometimes").model)
