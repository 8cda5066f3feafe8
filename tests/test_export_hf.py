"""Hugging Face export: transformers' SiglipModel gives our embeddings and logits."""

import os

import jax
import numpy as np
import pytest
from helpers import tiny_config

pytest.importorskip("transformers")
torch = pytest.importorskip("torch")

from contrastive_jax.export.hf import siglip_config, siglip_state_dict  # noqa: E402
from contrastive_jax.export.hf_clip import (  # noqa: E402
    clip_config,
    clip_state_dict,
    clip_unsupported,
)
from contrastive_jax.models import complete_config  # noqa: E402
from contrastive_jax.models.state import ModelDef  # noqa: E402

SIGLIP_MODEL = {
    "embed_dim": 32,
    "image": {"pool": "map", "head": False, "mlp_dim": 48, "depth": 2},
    "text": {"pool": "final", "head": True, "width": 24, "num_heads": 3, "depth": 2},
}


CLIP_MODEL = {
    "embed_dim": 24, "bias_init": None, "temperature_init": 14.0, "proj_bias": False,
    "image": {"pool": "cls", "pre_norm": True, "mlp_dim": 48, "depth": 2},
    "text": {"pool": "last", "causal": True, "width": 24, "num_heads": 3, "depth": 2},
}


def siglip_tiny(**sections):
    config = tiny_config(model=SIGLIP_MODEL, **sections)
    config.model.bias_init = -3.0
    return config


def inputs(seed=0, n=5, vocab=64, length=8):
    rng = np.random.default_rng(seed)
    images = rng.uniform(-1, 1, size=(n, 28, 28, 1)).astype(np.float32)
    lengths = rng.integers(2, length + 1, size=n)
    tokens = rng.integers(3, vocab, size=(n, length)).astype(np.int32)
    tokens[np.arange(length)[None] >= lengths[:, None]] = 0
    tokens[np.arange(n), lengths - 1] = 1  # EOS, then pads
    return images, tokens


def ours(model, images, tokens):
    zimg, ztxt = model(images, tokens)
    zimg, ztxt = np.asarray(zimg), np.asarray(ztxt)
    logits = ztxt @ zimg.T * float(model.temperature()) + float(model.bias())
    return zimg, ztxt, logits


def theirs(hf_model, images, tokens):
    rgb = np.repeat(images, 3, axis=-1)  # exported models read RGB; grey replicated is exact
    with torch.no_grad():
        out = hf_model(input_ids=torch.from_numpy(tokens.astype(np.int64)),
                       pixel_values=torch.from_numpy(rgb.transpose(0, 3, 1, 2)))
    return out.image_embeds.numpy(), out.text_embeds.numpy(), out.logits_per_text.numpy()


def random_params(config, seed):
    """Random weights (non-zero biases: a wrongly mapped bias cannot hide behind zero init)."""
    params, _ = ModelDef.init(complete_config(config.model), jax.random.key(seed))
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda x: np.asarray(x) + 0.05 * rng.standard_normal(x.shape,
                                                                              np.float32),
                        params)


def test_siglip_state_dict_matches_transformers_numerically():
    from transformers import SiglipModel

    model_config = complete_config(siglip_tiny().model)
    params, _ = ModelDef.init(model_config, jax.random.key(1))
    params = jax.tree.map(np.asarray, params)
    # Non-zero biases, so a wrongly mapped bias cannot hide behind zero init.
    rng = np.random.default_rng(0)
    params = jax.tree.map(lambda x: x + 0.05 * rng.standard_normal(x.shape, np.float32), params)
    hf_model = SiglipModel(siglip_config(model_config)).eval()
    state = {k: torch.from_numpy(v) for k, v in siglip_state_dict(params, 32).items()}
    hf_model.load_state_dict(state, strict=True)

    # Hand-checked entries: torch Linear is [out, in]; conv [out, C, p, p]; q is [in, H, hd].
    q = params["img"]["encoder"]["blocks"][0]["attn"]["query"]["kernel"]  # [32, 2, 16]
    np.testing.assert_array_equal(
        state["vision_model.encoder.layers.0.self_attn.q_proj.weight"].numpy()[17, 5],
        q[5, 1, 1])
    conv = params["img"]["embedding"]["kernel"]  # [7, 7, 1, 32]; exported split over RGB
    np.testing.assert_allclose(
        state["vision_model.embeddings.patch_embedding.weight"].numpy()[3, :, 2, 6],
        [conv[2, 6, 0, 3] / 3] * 3, rtol=1e-6)
    assert state["text_model.head.weight"].shape == (32, 24)

    model = ModelDef(model_config).bind(params)
    images, tokens = inputs()
    for a, b in zip(ours(model, images, tokens), theirs(hf_model, images, tokens), strict=True):
        assert np.max(np.abs(a - b)) <= 1e-4, np.max(np.abs(a - b))


def test_clip_state_dict_matches_transformers_numerically():
    from transformers import CLIPModel

    model_config = complete_config(tiny_config(model=CLIP_MODEL).model)
    assert clip_unsupported(model_config) == []
    params, _ = ModelDef.init(model_config, jax.random.key(2))
    rng = np.random.default_rng(1)
    params = jax.tree.map(lambda x: np.asarray(x) + 0.05 * rng.standard_normal(x.shape,
                                                                               np.float32),
                          params)
    hf_model = CLIPModel(clip_config(model_config)).eval()
    state = {k: torch.from_numpy(v) for k, v in clip_state_dict(params, model_config).items()}
    hf_model.load_state_dict(state, strict=True)
    # CLIP's patch conv has no bias and its class token a position: ours folded in.
    pos = state["vision_model.embeddings.position_embedding.weight"].numpy()
    np.testing.assert_array_equal(pos[0], 0)
    np.testing.assert_allclose(pos[1:], params["img"]["pos_embedding"][0]
                               + params["img"]["embedding"]["bias"], rtol=1e-6)
    assert state["text_projection.weight"].shape == (24, 24)  # [out, in], no bias entry
    model = ModelDef(model_config).bind(params)
    images, tokens = inputs(seed=4)
    diffs = [np.max(np.abs(a - b)) for a, b in zip(
        ours(model, images, tokens), theirs(hf_model, images, tokens), strict=True)]
    assert max(diffs) <= 1e-4, diffs
    # Causal and EOS-pooled: what follows the EOS (pads, or anything) changes nothing.
    longer = np.concatenate([tokens, np.zeros((len(tokens), 3), np.int32)], axis=1)
    np.testing.assert_allclose(model.encode_text(longer[:, :8]), model.encode_text(tokens))


def test_export_hf_refuses_text_conventions_its_tokenizer_cannot_follow(tmp_path):
    from contrastive_jax.errors import UserError
    from contrastive_jax.export.hf import export_hf

    for data, match in (({"pad_id": 1, "lowercase": False}, r"data.pad_id=1 \(T5Tokenizer "),
                        ({"eos": "yes", "lowercase": False}, "data.eos='yes'"),
                        ({"lowercase": "ascii"}, "data.lowercase='ascii'")):
        config = siglip_tiny(data=data)
        with pytest.raises(UserError, match=match):
            export_hf(config, {}, 0, "unused.model", str(tmp_path / "hf"))
    assert not os.path.exists(tmp_path / "hf")


def test_export_hf_refuses_what_siglip_cannot_express(trained_workdir, tmp_path, capsys):
    from contrastive_jax import cli

    # tiny_config's model (gap image pool, last-token text pool, no pre-norm), trained once
    # per session for the export and eval tests.
    workdir = trained_workdir
    out = str(tmp_path / "hf")
    assert cli.main(["export", "--model", workdir, "--format", "hf", "--out", out]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "image.pool='gap'" in err and "text.pool='last'" in err
    assert "nor as CLIPModel" in err and "image.pre_norm=False" in err
    assert not os.path.exists(out)


