"""The literature's loss variants against direct, loop-by-loop transcriptions of their papers."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import synthetic_batches, tiny_config

from contrastive_jax.config import load_config
from contrastive_jax.errors import ConfigError
from contrastive_jax.losses import LOSSES, create_loss, family, softmax_loss
from contrastive_jax.parallel.mesh import create_mesh

B, D = 6, 5


def embeddings(seed=0):
    rng = np.random.default_rng(seed)
    x, y = rng.normal(size=(2, B, D))
    y = x + 0.7 * y  # correlated pairs, so positives are not just noise
    norm = lambda a: a / np.linalg.norm(a, axis=-1, keepdims=True)  # noqa: E731
    return jnp.asarray(norm(x), jnp.float32), jnp.asarray(norm(y), jnp.float32)


def both_directions(row_loss, x, y, t):
    """Mean over rows of image->text and of text->image, averaged: the papers' symmetric use."""
    def one(a, c):
        return sum(row_loss(a, c, t, i) for i in range(B)) / B
    return 0.5 * (one(x, y) + one(y, x))


def hn_nce_direct(alpha, beta):
    def row(a, c, t, i):
        s = [t * jnp.dot(a[i], c[j]) for j in range(B)]
        z = sum(jnp.exp(beta * s[k]) for k in range(B) if k != i)
        denom = alpha * jnp.exp(s[i]) + sum(
            (B - 1) * jnp.exp(beta * s[j]) / z * jnp.exp(s[j]) for j in range(B) if j != i)
        return -jnp.log(jnp.exp(s[i]) / denom)
    return row


def debiased_direct(tau_plus):
    def row(a, c, t, i):
        s = [t * jnp.dot(a[i], c[j]) for j in range(B)]
        n = B - 1
        g = (sum(jnp.exp(s[j]) for j in range(B) if j != i) / n - tau_plus * jnp.exp(s[i]))
        g = jnp.maximum(g / (1 - tau_plus), jnp.exp(-t))
        return -jnp.log(jnp.exp(s[i]) / (jnp.exp(s[i]) + n * g))
    return row


def macl_direct(beta):
    def row(a, c, t, i):
        align = jax.lax.stop_gradient(sum(jnp.dot(a[k], c[k]) for k in range(B)) / B)
        tau = (1.0 / t) * (1 + beta * align)
        e = [jnp.exp(jnp.dot(a[i], c[j]) / tau) for j in range(B)]
        p = [v / sum(e) for v in e]
        w = jax.lax.stop_gradient(1.0 / sum(p[j] for j in range(B) if j != i))
        return -w * jnp.log(p[i])
    return row


CASES = [
    ("hn_nce", dict(alpha=1.0, beta=0.5), hn_nce_direct(1.0, 0.5)),
    ("hn_nce", dict(alpha=0.0, beta=1.0), hn_nce_direct(0.0, 1.0)),
    ("debiased_softmax", dict(tau_plus=0.1), debiased_direct(0.1)),
    ("debiased_softmax", dict(tau_plus=0.3), debiased_direct(0.3)),
    ("macl", dict(beta=0.5), macl_direct(0.5)),
]


@pytest.mark.parametrize("t", [2.0, 12.0])
@pytest.mark.parametrize("name, options, direct", CASES)
def test_value_and_gradients_match_the_formula(name, options, direct, t):
    x, y = embeddings()
    loss_fn = create_loss(name, **options)
    ours = lambda x, y, t: loss_fn(x, y, t)[0]  # noqa: E731
    theirs = lambda x, y, t: both_directions(direct, x, y, t)  # noqa: E731
    t = jnp.float32(t)
    # atol: where every row's loss is ~1e-8 (debiased at t=12: the clip binds), the float32
    # transcription's log(e^a / (e^a + tiny)) rounds to 0; ours is exact (float64 agrees).
    np.testing.assert_allclose(ours(x, y, t), theirs(x, y, t), rtol=1e-5, atol=1e-7)
    for g_ours, g_theirs in zip(jax.grad(ours, argnums=(0, 1, 2))(x, y, t),
                                jax.grad(theirs, argnums=(0, 1, 2))(x, y, t), strict=True):
        # float32 exp() of logits up to t in the transcription: compare at its precision.
        np.testing.assert_allclose(g_ours, g_theirs, rtol=1e-4, atol=3e-5)


def test_special_cases_reduce_to_clip():
    x, y = embeddings(1)
    clip = softmax_loss(x, y, 5.0)[0]
    np.testing.assert_allclose(family.hn_nce_loss(x, y, 5.0, alpha=1.0, beta=0.0)[0], clip,
                               rtol=1e-6)
    np.testing.assert_allclose(family.debiased_softmax_loss(x, y, 5.0, tau_plus=0.0)[0], clip,
                               rtol=1e-6)


def debiased_float64(x, y, t, tau_plus=0.1):
    """Chuang et al.'s formula in float64, each row scaled by e^{-m} (m: its largest term,
    or the clip's -t) so no term over- or underflows:

        L_i = log(e^{L_ii} + N g_i) - L_ii,
        N g_i = max((S_i - N tau e^{L_ii}) / (1 - tau), N e^{-t}),  S_i = sum_{j != i} e^{L_ij}
    """
    s = t * (np.asarray(x, np.float64) @ np.asarray(y, np.float64).T)

    def rows(logits):
        n, out = logits.shape[0] - 1, []
        for i, row in enumerate(logits):
            m = max(row.max(), -t)
            e = np.exp(row - m)
            estimate = (np.delete(e, i).sum() - n * tau_plus * e[i]) / (1 - tau_plus)
            ng = max(estimate, n * np.exp(-t - m))
            out.append(np.log(e[i] + ng) - (row[i] - m))
        return np.mean(out)

    return 0.5 * (rows(s) + rows(s.T))


EYE2 = [[1.0, 0.0], [0.0, 1.0]]
# A positive logit 2t below its row's largest (issue 19); and rows where the clip binds
# (positive 0, negative -t: the estimate is negative, N e^{-t} is used).
FAR_BELOW = (EYE2, [[-1.0, 0.0], [1.0, 0.0]])
CLIPPED = (EYE2, [[0.0, 1.0], [-1.0, 0.0]])


# One compilation for every case (same shapes; t is an argument).
_debiased_vg = jax.jit(jax.value_and_grad(
    lambda x, y, t: family.debiased_softmax_loss(x, y, t, tau_plus=0.1)[0], argnums=(0, 1, 2)))


@pytest.mark.parametrize("t", [2.0, 50.0, 100.0])
@pytest.mark.parametrize("case", [FAR_BELOW, CLIPPED], ids=["far_below", "clipped"])
def test_debiased_is_finite_and_exact_at_large_t(case, t):
    x, y = (np.asarray(a, np.float64) for a in case)
    value, grads = _debiased_vg(jnp.float32(x), jnp.float32(y), jnp.float32(t))
    np.testing.assert_allclose(value, debiased_float64(x, y, t), rtol=1e-6)
    # Gradients: finite, and equal to central differences of the float64 formula.
    h = 1e-6
    for arg, grad in enumerate(grads):
        assert np.all(np.isfinite(grad)), (arg, grad)
        wrt = [x, y, np.float64(t)][arg]
        numeric = np.zeros(np.shape(wrt))
        for k in np.ndindex(numeric.shape):
            step = np.zeros(np.shape(wrt))
            step[k] = h
            plus = [x, y, t]
            minus = [x, y, t]
            plus[arg], minus[arg] = wrt + step, wrt - step
            numeric[k] = (debiased_float64(*plus) - debiased_float64(*minus)) / (2 * h)
        np.testing.assert_allclose(grad, numeric, rtol=1e-4, atol=1e-4, err_msg=str(arg))


def test_alignment_uniformity_terms():
    x, y = embeddings(2)
    base = create_loss("softmax")
    loss_fn = family.with_alignment_uniformity(base, align_weight=0.5, uniform_weight=0.25)
    loss, metrics = loss_fn(x, y, 5.0)
    align = np.mean(np.sum((np.asarray(x) - np.asarray(y)) ** 2, -1))

    def unif(z):
        z = np.asarray(z, np.float64)
        d = ((z[:, None] - z[None]) ** 2).sum(-1)
        return np.log(np.exp(-2 * d)[~np.eye(B, dtype=bool)].mean())

    uniform = 0.5 * (unif(x) + unif(y))
    np.testing.assert_allclose(metrics["alignment"], align, rtol=1e-5)
    np.testing.assert_allclose(metrics["uniformity"], uniform, rtol=1e-5)
    np.testing.assert_allclose(loss, base(x, y, 5.0)[0] + 0.5 * align + 0.25 * uniform,
                               rtol=1e-5)


def test_reference_only_losses_refuse_a_split_batch_and_labels():
    mesh8 = create_mesh({"data": -1}, devices=jax.devices()[:8])
    with pytest.raises(ValueError, match="reference-only .* 8 devices"):
        create_loss("hn_nce", mesh=mesh8, batch_axes=("data", "fsdp"))
    mesh1 = create_mesh({"data": -1}, devices=jax.devices()[:1])
    create_loss("macl", mesh=mesh1, batch_axes=("data", "fsdp"))  # one shard: fine
    x, y = embeddings()
    with pytest.raises(ValueError, match="diagonal only"):
        family.macl_loss(x, y, 5.0, labels=jnp.arange(B))
    with pytest.raises(ValueError, match="tau_plus"):
        family.debiased_softmax_loss(x, y, 5.0, tau_plus=1.0)


@pytest.mark.parametrize("override, message", [
    (["loss.positives=labels"], "config key 'loss.positives': loss 'hn_nce' defines positives "
                                "as the diagonal only"),
    (["loss.hn_alpha=-1"], "config key 'loss.hn_alpha', 'loss.hn_beta': hn_nce needs alpha"),
    (["loss.name=debiased_softmax", "loss.tau_plus=1.5"], "config key 'loss.tau_plus': "),
    (["loss.name=macl", "loss.macl_beta=1"], "config key 'loss.macl_beta': macl needs"),
    (["loss.name=triplet"], "config key 'loss.name': unknown loss 'triplet'; known: softmax"),
])
def test_bad_loss_options_are_config_errors_naming_the_key(override, message):
    with pytest.raises(ConfigError) as info:
        load_config("configs/demo_siglip.py", ["loss.name=hn_nce", *override])
    assert message in str(info.value) and "\n" not in str(info.value)


def test_options_are_checked_when_the_loss_is_created_and_a_split_batch_names_the_key():
    with pytest.raises(ValueError, match="tau_plus"):  # before anything is traced
        create_loss("debiased_softmax", tau_plus=1.0)
    mesh8 = create_mesh({"data": -1}, devices=jax.devices()[:8])
    with pytest.raises(ConfigError, match="config key 'loss.name': loss 'macl' is reference"):
        create_loss("macl", mesh=mesh8, batch_axes=("data",))
    assert LOSSES["sigmoid_chunked"].options == {"bidirectional": "bidirectional",
                                                 "tile": "tile"}


@pytest.mark.parametrize("loss", ["hn_nce", "debiased_softmax", "macl"])
def test_each_trains_through_the_config(loss):
    from test_train_step import run_steps

    config = tiny_config(loss={"name": loss, "align_weight": 0.1, "uniform_weight": 0.1})
    _, history = run_steps(config, jax.devices()[:1], synthetic_batches(3, 16, seed=3))
    losses = [float(m["train/loss"]) for m in history]
    assert all(np.isfinite(losses))
    assert "train/alignment" in history[0] and "train/uniformity" in history[0]


def test_positives_by_identity_match_the_formula():
    """SupCon-style: pairs that share a label are all positives, for softmax and sigmoid."""
    x, y = embeddings(4)
    labels = jnp.array([0, 1, 0, 2, 1, 0])
    t, bias = 4.0, -2.0
    s = np.asarray(t * (x @ y.T), np.float64)
    same = np.asarray(labels)[:, None] == np.asarray(labels)[None, :]

    def soft_ce(logits, pos):
        total = 0.0
        for i in range(B):
            log_norm = np.log(np.exp(logits[i]).sum())
            total += -np.mean([logits[i, j] - log_norm for j in range(B) if pos[i, j]])
        return total / B

    clip = 0.5 * (soft_ce(s, same) + soft_ce(s.T, same.T))
    np.testing.assert_allclose(softmax_loss(x, y, t, labels=labels)[0], clip, rtol=1e-5)
    siglip = sum(np.log1p(np.exp(-(1 if same[i, j] else -1) * (s[i, j] + bias)))
                 for i in range(B) for j in range(B)) / B
    from contrastive_jax.losses import sigmoid_loss

    np.testing.assert_allclose(sigmoid_loss(x, y, t, bias, labels=labels)[0], siglip, rtol=1e-5)
