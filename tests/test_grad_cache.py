"""GradCache (train.microbatches > 1) gives the full-batch gradient, with less memory."""

import jax
import numpy as np
import pytest
from helpers import synthetic_batches, tiny_config
from test_train_step import run_steps

from contrastive_jax.losses import loss_from_config
from contrastive_jax.models.state import ModelDef
from contrastive_jax.parallel.mesh import create_mesh, to_global
from contrastive_jax.train.grad_cache import grad_cache_value_and_grad


def _setup(config, devices, batch_size, seed=0):
    mesh = create_mesh(config.mesh, devices=devices)
    model_def = ModelDef(config.model)
    params, rest = ModelDef.init(config.model, jax.random.key(seed))
    batch = to_global(synthetic_batches(1, batch_size, seed=seed)[0], mesh)
    return mesh, model_def, params, rest, batch, loss_from_config(config, mesh)


def _full_value_and_grad(model_def, loss_fn, params, rest, image, text, labels):
    """The oracle: the ordinary step's value_and_grad over the whole batch."""

    def loss_of(p):
        model = model_def.bind(p, rest)
        zimg, ztxt = model(image, text)
        t, b = model.temperature(), model.bias()
        loss, aux = loss_fn(zimg, ztxt, t, b, labels)
        return loss, (aux, t, b)

    return jax.value_and_grad(loss_of, has_aux=True)(params)


def _grads(config, devices, batch_size, ks, labels=False):
    """(full-batch (value, grads), [GradCache (value, grads) for k in ks]), one compile."""
    mesh, model_def, params, rest, batch, loss_fn = _setup(config, devices, batch_size)
    lab = batch["label"] if labels else None

    @jax.jit
    def both(params, image, text, lab):
        full = _full_value_and_grad(model_def, loss_fn, params, rest, image, text, lab)
        cached = [grad_cache_value_and_grad(model_def, loss_fn, params, rest, image, text,
                                            lab, k, mesh) for k in ks]
        return full, cached

    return jax.device_get(both(params, batch["image"], batch["text"], lab))


def _assert_close(got, want, rtol=1e-5):
    """Per-leaf relative error in the L2 norm."""
    total = np.sqrt(sum(np.sum(np.square(x)) for x in jax.tree.leaves(want)))
    for (path, g), w in zip(jax.tree_util.tree_leaves_with_path(got), jax.tree.leaves(want),
                            strict=True):
        name = jax.tree_util.keystr(path)
        if "['key']['bias']" in name:
            # Softmax attention ignores the key bias: its exact gradient is 0 and both
            # sides hold only rounding noise, tiny against the whole gradient.
            assert np.linalg.norm(np.ravel(g)) <= 1e-6 * total, name
            continue
        err = np.linalg.norm(np.ravel(g - w))
        assert err <= rtol * np.linalg.norm(np.ravel(w)), f"{name}: {err}"


@pytest.mark.parametrize("loss", ["softmax", "softmax_sharded", "sigmoid_chunked"])
@pytest.mark.parametrize("num_devices", [1, 4])
def test_grad_cache_equals_full_batch_gradient(loss, num_devices):
    """Towers, t_log and b: k = 2 and k = 4 micro-batches give the full-batch gradient.

    t_log and b are checked on their own too: summing per-micro-batch head gradients
    (open_clip's accumulation) would give them about k times their gradient."""
    config = tiny_config(loss={"name": loss})
    full, cached = _grads(config, jax.devices()[:num_devices], 32, (2, 4))
    (loss_full, aux_full), g_full = full
    heads = ["t_log", "b"] if loss.startswith("sigmoid") else ["t_log"]
    for k, ((loss_gc, aux_gc), g_gc) in zip((2, 4), cached, strict=True):
        np.testing.assert_allclose(loss_gc, loss_full, rtol=1e-6)
        for key in ("pos_logit", "neg_logit"):
            np.testing.assert_allclose(aux_gc[0][key], aux_full[0][key], rtol=1e-5, atol=1e-6)
        _assert_close(g_gc, g_full)
        for name in heads:
            assert abs(g_full[name]) > 1e-3  # large enough that a k-fold error is visible
            np.testing.assert_allclose(g_gc[name], g_full[name], rtol=1e-5)
            assert not np.isclose(g_gc[name], k * g_full[name], rtol=0.25)


@pytest.mark.parametrize("loss", ["sigmoid", "sigmoid_chunked"])
def test_grad_cache_eight_devices_with_label_positives(loss):
    config = tiny_config(loss={"name": loss, "bidirectional": loss == "sigmoid_chunked"})
    full, (cached,) = _grads(config, jax.devices()[:8], 32, (4,), labels=True)
    np.testing.assert_allclose(cached[0][0], full[0][0], rtol=1e-6)
    _assert_close(cached[1], full[1])


def test_micro_batches_stay_sharded_over_devices():
    """Each device holds its slice of every micro-batch: the split needs no communication."""
    config = tiny_config(loss={"name": "sigmoid_chunked"})
    mesh, model_def, params, rest, batch, loss_fn = _setup(config, jax.devices()[:8], 32)

    def grads(params, image, text):
        return grad_cache_value_and_grad(model_def, loss_fn, params, rest, image, text, None,
                                         4, mesh)

    hlo = jax.jit(grads).lower(params, batch["image"], batch["text"]).compile().as_text()
    assert "all-to-all" not in hlo
    assert "all-gather" not in hlo  # the ring loss only ppermutes; nothing is regathered


def test_micro_batch_that_does_not_split_over_devices_is_an_error():
    config = tiny_config(loss={"name": "sigmoid_chunked"})
    mesh, model_def, params, rest, batch, loss_fn = _setup(config, jax.devices()[:8], 16)
    with pytest.raises(ValueError, match="do not split over 8 batch shards"):
        jax.eval_shape(lambda p: grad_cache_value_and_grad(
            model_def, loss_fn, p, rest, batch["image"], batch["text"], None, 4, mesh), params)


def test_train_steps_with_micro_batches_match_ordinary_steps():
    base = tiny_config(loss={"name": "sigmoid_chunked"}, train={"batch_size": 32})
    batches = synthetic_batches(4, 32)
    state1, hist1 = run_steps(base, jax.devices()[:8], batches)
    micro = tiny_config(loss={"name": "sigmoid_chunked"},
                        train={"batch_size": 32, "microbatches": 4})
    state4, hist4 = run_steps(micro, jax.devices()[:8], batches)
    for key in hist1[0]:
        np.testing.assert_allclose([m[key] for m in hist4], [m[key] for m in hist1],
                                   rtol=1e-5, atol=1e-6, err_msg=key)
    assert set(hist4[0]) == set(hist1[0])
