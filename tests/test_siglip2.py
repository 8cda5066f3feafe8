"""SigLIP 2's recipe: the distillation loss against a loop, local views and patch masks, the
masked tower, the EMA teacher (arithmetic, no gradient, in the checkpoint), a sharded step,
the towers-only export and the config errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import synthetic_batches, tiny_config, tiny_siglip2_config

from contrastive_jax.checkpoints.store import Checkpointer
from contrastive_jax.config import validate
from contrastive_jax.errors import ConfigError
from contrastive_jax.losses.captioning import cut_keeping_eos
from contrastive_jax.losses.self_distill import (
    crop_and_resize,
    distill_cross_entropy,
    patch_mask,
)
from contrastive_jax.models.siglip2 import towers_only, update_teacher
from contrastive_jax.models.state import ModelDef
from contrastive_jax.parallel.mesh import create_mesh, to_global
from contrastive_jax.train.init_state import create_train_state
from contrastive_jax.train.optimizer import create_optimizer
from contrastive_jax.train.step import train_step_from_config


def test_distill_cross_entropy_equals_a_loop():
    rng = np.random.default_rng(0)
    student, teacher = rng.normal(size=(3, 4, 5)), rng.normal(size=(3, 4, 5))
    center, weights = rng.normal(size=5), rng.integers(0, 2, size=(3, 4))
    got = distill_cross_entropy(jnp.asarray(student), jnp.asarray(teacher), jnp.asarray(center),
                                student_temp=0.1, teacher_temp=0.04,
                                weights=jnp.asarray(weights))
    total = 0.0
    for i in range(3):
        for j in range(4):
            t = np.exp((teacher[i, j] - center) / 0.04)
            s = student[i, j] / 0.1
            log_p = s - np.log(np.sum(np.exp(s - s.max()))) - s.max()
            total += weights[i, j] * -np.sum(t / t.sum() * log_p)
    np.testing.assert_allclose(got, total / weights.sum(), rtol=1e-5)
    # The teacher side is a constant.
    grad = jax.grad(lambda t: distill_cross_entropy(jnp.asarray(student), t, 0.0,
                                                    student_temp=0.1, teacher_temp=0.04))
    assert not np.any(grad(jnp.asarray(teacher)))


def test_local_views_crop_and_resize_and_patch_masks_are_exact():
    images = jax.random.normal(jax.random.key(0), (2, 8, 8, 1))
    whole = jnp.array([[[0.0, 0.0, 8.0, 8.0]]] * 2)
    np.testing.assert_allclose(crop_and_resize(images, whole)[:, 0], images, atol=1e-6)
    # The box rows 2..5, columns 4..7, resized x2: as resizing the sliced pixels, inside
    # the border (there, the crop's interpolation also reads the pixels beyond the box,
    # where a resize of the slice alone renormalises).
    box = jnp.array([[[2.0, 4.0, 4.0, 4.0]]] * 2)
    want = jax.image.resize(images[:, 2:6, 4:8], (2, 8, 8, 1), "linear")
    got = crop_and_resize(images, box)[:, 0]
    np.testing.assert_allclose(got[:, 1:-1, 1:-1], want[:, 1:-1, 1:-1], atol=1e-5)
    # Resized to another size: as resizing the image (the whole box).
    np.testing.assert_allclose(crop_and_resize(images, whole, (4, 4))[:, 0],
                               jax.image.resize(images, (2, 4, 4, 1), "linear"), atol=1e-6)
    mask = patch_mask(jax.random.key(1), 4, 16, 0.5)
    assert mask.shape == (4, 16) and set(np.asarray(mask.sum(1))) == {8}
    np.testing.assert_array_equal(mask, patch_mask(jax.random.key(1), 4, 16, 0.5))
    assert not np.array_equal(mask, patch_mask(jax.random.key(2), 4, 16, 0.5))


def test_captions_longer_than_the_decoder_are_cut_keeping_their_eos():
    text = jnp.array([[5, 6, 7, 8, 1, 0], [5, 6, 7, 1, 0, 0], [5, 1, 0, 0, 0, 0]])
    np.testing.assert_array_equal(cut_keeping_eos(text, 4),
                                  [[5, 6, 7, 1], [5, 6, 7, 1], [5, 1, 0, 0]])
    np.testing.assert_array_equal(cut_keeping_eos(text, 6), text)


def _model(config):
    model_def = ModelDef(config.model)
    params, rest = ModelDef.init(config.model, jax.random.key(0))
    return model_def, params, rest


def test_masked_patches_are_replaced_by_the_mask_token():
    model_def, params, rest = _model(tiny_siglip2_config())
    model = model_def.bind(params, rest)
    images = jax.random.normal(jax.random.key(0), (2, 28, 28, 1))
    replace = jnp.zeros((2, 16), bool).at[:, 5].set(True)  # patch 5: row 1, column 1
    token = jax.random.normal(jax.random.key(1), (32,))
    _, plain = model.img(images, return_tokens=True)
    _, none = model.img(images, return_tokens=True, replace=replace & False, mask_token=token)
    np.testing.assert_allclose(none, plain, atol=1e-6)
    _, masked = model.img(images, return_tokens=True, replace=replace, mask_token=token)
    # What is under a masked patch no longer matters; what is under another one does.
    under = images.at[:, 7:14, 7:14].add(1.0)
    _, moved = model.img(under, return_tokens=True, replace=replace, mask_token=token)
    np.testing.assert_allclose(moved, masked, atol=1e-5)
    beside = images.at[:, 0:7, 0:7].add(1.0)
    _, moved = model.img(beside, return_tokens=True, replace=replace, mask_token=token)
    assert not np.allclose(moved, masked, atol=1e-3)


def test_the_teacher_is_state_copied_then_averaged_and_gets_no_gradient():
    config = tiny_siglip2_config()
    model_def, params, rest = _model(config)
    assert "teacher" in rest and not any(k == "teacher" for k in params)
    # It starts as the student.
    for a, b in zip(jax.tree.leaves(rest["teacher"]["img"]), jax.tree.leaves(params["img"]),
                    strict=True):
        np.testing.assert_array_equal(a, b)
    moved = jax.tree.map(lambda x: x + 1.0, params)
    stats = {"_center": jnp.ones(32), "_patch_center": jnp.full(32, 2.0)}
    before = update_teacher(rest, moved, stats, jnp.bool_(False), model_def.abstract)
    after = update_teacher(rest, moved, stats, jnp.bool_(True), model_def.abstract)
    for part in ("img", "distill_head", "patch_head"):
        for t, s, b, a in zip(*(jax.tree.leaves(x) for x in (
                rest["teacher"][part], moved[part], before["teacher"][part],
                after["teacher"][part])), strict=True):
            np.testing.assert_array_equal(b, s)  # before the start: a copy
            np.testing.assert_allclose(a, 0.9 * t + 0.1 * s, rtol=1e-6)  # ema 0.9
    np.testing.assert_array_equal(before["teacher"]["center"], rest["teacher"]["center"])
    np.testing.assert_allclose(after["teacher"]["center"], 0.1 * np.ones(32), rtol=1e-6)
    np.testing.assert_allclose(after["teacher"]["patch_center"], 0.2 * np.ones(32),
                               rtol=1e-6)


def _trainer(config, devices):
    """(a fresh state, the jitted step) on `devices`: one compiled step for every run."""
    mesh = create_mesh(config.mesh, devices=devices)
    tx, _ = create_optimizer(config.optimizer, config.train.steps)
    state, shardings = create_train_state(config, tx, mesh)
    step = train_step_from_config(config, mesh, tx, shardings)
    return (lambda: create_train_state(config, tx, mesh)[0]), step, mesh


def _run(fresh, step, batches, state=None):
    state, history = fresh() if state is None else state, []
    for batch in batches:
        state, metrics = step(state, batch)
        history.append(jax.device_get(metrics))
    return state, history


def test_sharded_steps_equal_one_device_the_teacher_averages_and_resume_is_exact(tmp_path):
    # 5 steps, the self-supervised terms from step 2: both phases, on 1 and 8 devices.
    config = tiny_siglip2_config(train={"steps": 5})
    raw = synthetic_batches(5, config.train.batch_size)
    fresh1, step1, mesh1 = _trainer(config, jax.devices()[:1])
    batches = [to_global(b, mesh1) for b in raw]
    state1, hist1 = _run(fresh1, step1, batches[:3])
    before = jax.device_get(state1.rest["teacher"])  # (a host copy: the step donates)
    state1, more = _run(fresh1, step1, batches[3:4], state1)
    # A distilling step moves the teacher by the EMA of the updated student alone: no
    # gradient reached it.
    student, after = jax.device_get((state1.params, state1.rest["teacher"]))
    for part in ("img", "distill_head", "patch_head"):
        for t, s, n in zip(*(jax.tree.leaves(x) for x in (before[part], student[part],
                                                          after[part])), strict=True):
            np.testing.assert_allclose(n, 0.9 * t + 0.1 * s, rtol=1e-5, atol=1e-7)
    state1, last = _run(fresh1, step1, batches[4:], state1)
    hist1 += more + last

    fresh8, step8, mesh8 = _trainer(config, jax.devices()[:8])
    state8, hist8 = _run(fresh8, step8, [to_global(b, mesh8) for b in raw])
    for key in ("train/loss", "train/locca_loss", "train/distill_loss", "train/masked_loss"):
        got, want = [m[key] for m in hist8], [m[key] for m in hist1]
        np.testing.assert_allclose(got, want, rtol=1e-5, err_msg=key)
    assert [m["train/distill_loss"] > 0 for m in hist1] == [False, False, True, True, True]
    leaves8 = jax.tree.leaves(jax.device_get(state8.rest))
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(jax.device_get(state1.rest)),
                            leaves8, strict=True):
        name = jax.tree_util.keystr(path)
        if "['key']['bias']" not in name:  # rounding noise, as in test_train_step
            np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-6, err_msg=name)

    # Cut after step 3, saved with its teacher, restored into a fresh state, resumed: the
    # params and the teacher are the unbroken run's, bit for bit.
    straight = jax.device_get((state1.params, state1.rest))
    cut, _ = _run(fresh1, step1, batches[:3])
    checkpointer = Checkpointer(str(tmp_path), config)
    checkpointer.save(cut, examples_seen=48, force=True)
    checkpointer.close()
    checkpointer = Checkpointer(str(tmp_path), config)
    shardings = jax.tree.map(lambda x: x.sharding, cut)
    resumed, _ = checkpointer.restore(fresh1(), shardings)
    checkpointer.close()
    assert int(resumed.step) == 3 and "teacher" in resumed.rest
    resumed, _ = _run(fresh1, step1, batches[3:], resumed)
    for a, b in zip(jax.tree.leaves(straight), jax.tree.leaves(jax.device_get(
            (resumed.params, resumed.rest))), strict=True):
        np.testing.assert_array_equal(a, b)


def test_exports_and_evals_carry_the_two_towers_alone():
    config = tiny_siglip2_config()
    model_def, params, rest = _model(config)
    model_config, towers = towers_only(config.model, params)
    assert model_config.name == "two_tower"
    assert sorted(towers) == sorted(k for k in params if k not in (
        "decoder", "distill_head", "patch_head", "mask_token"))
    plain = ModelDef(model_config).bind(towers)
    full = model_def.bind(params, rest)
    batch = synthetic_batches(1, 4)[0]
    np.testing.assert_array_equal(plain.encode_image(batch["image"]),
                                  full.encode_image(batch["image"]))
    np.testing.assert_array_equal(plain.encode_text(batch["text"]),
                                  full.encode_text(batch["text"]))


@pytest.mark.parametrize("sections, key", [
    ({"train": {"microbatches": 2}}, "train.microbatches"),
    ({"data": {"pad_id": 1}}, "data.pad_id"),
    ({"model": {"teacher": {"start_fraction": 1.5}}}, "model.teacher.start_fraction"),
    ({"model": {"masked_prediction": {"weight": -1.0}}}, "model.masked_prediction.weight"),
    ({"model": {"self_distill": {"local_scale": (0.5, 0.2)}}}, "model.self_distill.local_scale"),
    ({"data": {"eos": "yes"}}, "data.eos"),
])
def test_senseless_siglip2_configs_are_one_line_errors(sections, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        validate(tiny_siglip2_config(**sections))


def test_distillation_on_a_model_without_a_teacher_is_a_config_error():
    with pytest.raises(ConfigError, match=r"unknown config key 'model\.teacher'"):
        tiny_config(model={"teacher": {"ema": 0.9}})
