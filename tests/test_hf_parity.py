"""Exports and imports, through each library's natural call path: transformers' processor
output passed whole and its zero-shot pipeline, open_clip's local-dir loaders; and `hf:DIR` /
`open_clip:DIR` read back as our model, both from our exports and from models the libraries
built themselves."""

import logging
import os
import shutil

import jax
import numpy as np
import pytest
from helpers import fashion_tasks, tiny_config

pytest.importorskip("transformers")
torch = pytest.importorskip("torch")
from PIL import Image  # noqa: E402

from contrastive_jax.data import augment  # noqa: E402
from contrastive_jax.export.hf import export_hf  # noqa: E402
from contrastive_jax.export.model_spec import load_model  # noqa: E402
from contrastive_jax.models import complete_config  # noqa: E402
from contrastive_jax.models.state import ModelDef  # noqa: E402

# SigLIP's pipeline pads text to 64 tokens (big_vision's SigLIP length): max_len 64.
SIGLIP = {"embed_dim": 32, "bias_init": -3.0,
          "image": {"pool": "map", "head": False, "mlp_dim": 48, "depth": 2},
          "text": {"pool": "final", "head": True, "width": 24, "num_heads": 3, "depth": 2,
                   "max_len": 64}}
# CLIP's pipeline does not truncate: max_len 32 holds its "This is a photo of ..." prompts.
CLIP = {"embed_dim": 24, "bias_init": None, "temperature_init": 14.0, "proj_bias": False,
        "image": {"pool": "cls", "pre_norm": True, "mlp_dim": 48, "depth": 2},
        "text": {"pool": "last", "causal": True, "width": 24, "num_heads": 3, "depth": 2,
                 "max_len": 32}}
TEXTS = ["a photo of a bag.", "An Ankle BOOT, seen from above!!", "a t-shirt/top", "coat"]


def _config(model, max_len, loss):
    return tiny_config(model=model, data={"max_len": max_len}, loss={"name": loss})


def _random_params(config, seed):
    params, _ = ModelDef.init(complete_config(config.model), jax.random.key(seed))
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda x: np.asarray(x) + 0.05 * rng.standard_normal(
        x.shape, np.float32), params)


def _grey_images(n=3, seed=0, size=(28, 28)):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, size=size, dtype=np.uint8) for _ in range(n)]


def _ours(config, params, tokenizer_file, pixels, texts):
    """Our embeddings and logits, fed as our eval pipeline feeds the model."""
    from contrastive_jax.data.text_conventions import for_model
    from contrastive_jax.data.tokenizer import Tokenizer

    model = ModelDef(complete_config(config.model)).bind(params)
    images = np.stack([np.asarray(augment.resize(p[..., None], 28)) for p in pixels])
    images = images / 127.5 - 1.0
    if config.model.image.channels == 3:
        images = np.repeat(images, 3, axis=-1)
    tokens = Tokenizer(tokenizer_file, for_model(config)).encode_batch(texts,
                                                                       config.data.max_len)
    zimg, ztxt = (np.asarray(z) for z in model(images.astype(np.float32), tokens))
    logits = zimg @ ztxt.T * float(model.temperature()) + float(model.bias())
    return zimg, ztxt, logits


@pytest.fixture(scope="module")
def tokenizer_file(trained_workdir):
    return os.path.join(trained_workdir, "tokenizer.model")


@pytest.fixture(scope="module", params=["siglip", "clip"])
def exported(request, tokenizer_file, tmp_path_factory):
    """(kind, config, params, export dir) of a random tiny model exported to hf."""
    siglip = request.param == "siglip"
    config = (_config(SIGLIP, 64, "sigmoid_chunked") if siglip
              else _config(CLIP, 32, "softmax"))
    params = _random_params(config, seed=3 if siglip else 5)
    out = str(tmp_path_factory.mktemp(request.param) / "hf")
    export_hf(config, params, 7, tokenizer_file, out)
    return request.param, config, params, out


def test_processor_output_passed_whole_gives_our_embeddings(exported, tokenizer_file, caplog):
    from transformers import AutoModel, AutoProcessor

    kind, config, params, out = exported
    with caplog.at_level(logging.WARNING):
        model = AutoModel.from_pretrained(out).eval()
        processor = AutoProcessor.from_pretrained(out)
    # transformers' own default SiglipTextConfig (bos 49406 in a 32000 vocab) warns when it
    # builds it for a repr, for every SiglipModel; nothing else may warn.
    ours_warned = [r.getMessage() for r in caplog.records
                   if "between 0 and 31999" not in r.getMessage()]
    assert ours_warned == []
    pixels = _grey_images()
    inputs = processor(text=TEXTS, images=[Image.fromarray(p) for p in pixels],
                       padding="max_length", truncation=True, return_tensors="pt")
    if kind == "siglip":  # trained unmasked: no attention_mask to pass
        assert set(inputs) == {"input_ids", "pixel_values"}
    with torch.no_grad():
        got = model(**inputs)
    want = _ours(config, params, tokenizer_file, pixels, TEXTS)
    for a, b in zip(want, (got.image_embeds, got.text_embeds, got.logits_per_image),
                    strict=True):
        np.testing.assert_allclose(b.numpy(), a, atol=1e-5)


def test_zero_shot_pipeline_gives_our_predictions(exported, tokenizer_file):
    from transformers import pipeline

    kind, config, params, out = exported
    classifier = pipeline("zero-shot-image-classification", model=out)
    labels = ["bag", "ankle boot", "coat", "sandal"]
    prompts = [f"This is a photo of {label}." for label in labels]  # the pipeline's template
    for pixels in _grey_images(n=2, seed=1):
        result = classifier(Image.fromarray(pixels), candidate_labels=labels)
        logits = _ours(config, params, tokenizer_file, [pixels], prompts)[2][0]
        scores = (1 / (1 + np.exp(-logits)) if kind == "siglip"
                  else np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum())
        got = {r["label"]: r["score"] for r in result}
        np.testing.assert_allclose([got[label] for label in labels], scores, atol=1e-5)
        assert result[0]["label"] == labels[int(np.argmax(logits))]


def test_image_processor_resizes_as_our_eval(exported):
    """Other sizes and aspect ratios are squashed to 28x28 as our eval pipeline does: the
    same antialiased bilinear filter; the processor rounds to uint8 first (<= 1 level)."""
    from transformers import AutoImageProcessor

    processor = AutoImageProcessor.from_pretrained(exported[3])
    for size in ((28, 28), (40, 30), (17, 53)):
        pixels = _grey_images(n=1, seed=2, size=size)[0]
        got = processor(images=Image.fromarray(pixels), return_tensors="np")["pixel_values"]
        want = np.asarray(augment.resize(pixels[..., None], 28))[..., 0] / 127.5 - 1.0
        assert got.shape == (1, 3, 28, 28)
        tol = 1e-5 if size == (28, 28) else 1.01 / 127.5
        np.testing.assert_allclose(got[0], np.broadcast_to(want, (3, 28, 28)), atol=tol)


def test_hf_export_reads_back_as_our_model(exported):
    _, config, params, out = exported
    model = load_model(f"hf:{out}")
    got = jax.device_get(model.state.params)
    images, tokens = np.random.default_rng(0).uniform(-1, 1, (2, 28, 28, 1)), np.array(
        [[5, 9, 1] + [0] * (config.data.max_len - 3)] * 2, np.int32)
    ours = ModelDef(complete_config(config.model)).bind(params)
    theirs = model.model_def.bind(got)
    for a, b in zip(ours(images.astype(np.float32), tokens),
                    theirs(np.repeat(images, 3, -1).astype(np.float32), tokens), strict=True):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), atol=1e-5)
    assert model.config.data.value_range == (-1.0, 1.0)


def test_eval_of_the_hf_import_gives_the_grey_models_numbers(exported, tokenizer_file,
                                                            fake_data_dir, tmp_path):
    """`eval --model hf:DIR` of a grey model's export: the RGB import reads the grey
    evaluation and training data replicated to RGB, and every number equals the grey
    model's own (its native export, evaluated the same way)."""
    from contrastive_jax.evaluate.model_eval import evaluate_model
    from contrastive_jax.export.native import export_weights

    _, config, params, out = exported
    native = export_weights("npz", config, params, 7, tokenizer_file, str(tmp_path / "npz"))
    overrides = [f"data.data_dir={fake_data_dir}", f"evals.tasks={fashion_tasks()!r}"]
    want = evaluate_model(native, overrides=overrides)
    got = evaluate_model(f"hf:{out}", overrides=overrides)
    assert {"embedding_stats/fashion_mnist/alignment", "zeroshot/fashion_mnist/top1"} <= set(want)
    assert set(got) == set(want)
    for key, value in want.items():
        if key != "step":  # an hf directory records no training step
            np.testing.assert_allclose(got[key], value, atol=1e-5, err_msg=key)


@pytest.mark.parametrize("kind", ["siglip", "clip"])
def test_a_model_transformers_built_imports_with_its_embeddings(kind, tokenizer_file,
                                                                tmp_path):
    from transformers import CLIPConfig, CLIPModel, SiglipConfig, SiglipModel, T5Tokenizer

    tower = dict(hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                 num_attention_heads=2, hidden_act="gelu_pytorch_tanh", layer_norm_eps=1e-6)
    text = dict(tower, vocab_size=64, max_position_embeddings=8, pad_token_id=0,
                eos_token_id=1, bos_token_id=None)
    vision = dict(tower, image_size=28, patch_size=7, num_channels=3)
    if kind == "siglip":
        hf = SiglipModel(SiglipConfig(text_config=dict(text, projection_size=32),
                                      vision_config=vision))
    else:
        hf = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=16))
    hf.eval()
    with torch.no_grad():  # random biases and a logit bias, so none hides behind zero init
        for p in hf.parameters():
            p.add_(0.05 * torch.randn_like(p))
    out = str(tmp_path / kind)
    hf.save_pretrained(out)
    T5Tokenizer(vocab_file=tokenizer_file, extra_ids=0).save_pretrained(out)
    # As on the Hub (google/siglip-*): the sentencepiece model beside tokenizer.json.
    shutil.copyfile(tokenizer_file, os.path.join(out, "spiece.model"))
    model = load_model(f"hf:{out}")
    images = np.random.default_rng(1).uniform(-1, 1, (3, 28, 28, 3)).astype(np.float32)
    tokens = model.text_encoder.encode_batch(TEXTS[:3], 8)
    with torch.no_grad():
        want = hf(input_ids=torch.from_numpy(tokens.astype(np.int64)),
                  pixel_values=torch.from_numpy(images.transpose(0, 3, 1, 2)))
    ours = model.model_def.bind(jax.device_get(model.state.params))
    zimg, ztxt = ours(images, tokens)
    np.testing.assert_allclose(np.asarray(zimg), want.image_embeds.numpy(), atol=1e-5)
    np.testing.assert_allclose(np.asarray(ztxt), want.text_embeds.numpy(), atol=1e-5)
    logits = np.asarray(zimg) @ np.asarray(ztxt).T * float(ours.temperature()) + float(
        ours.bias())
    np.testing.assert_allclose(logits, want.logits_per_image.numpy(), atol=1e-4)


def test_import_refusals_are_one_line_naming_the_file(exported, tmp_path):
    import json

    from contrastive_jax.errors import UserError

    out = str(tmp_path / "copy")
    shutil.copytree(exported[3], out)
    with open(os.path.join(out, "config.json")) as f:
        cfg = json.load(f)
    cfg["vision_config"]["hidden_act"] = "quick_gelu"
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(cfg, f)
    with pytest.raises(UserError, match=r"config.json: hidden_act='quick_gelu'"):
        load_model(f"hf:{out}")
    os.remove(os.path.join(out, "spiece.model"))
    with pytest.raises(UserError, match="no directory"):
        load_model(f"hf:{out}-missing")


# open_clip: a CLIP (causal text pooled at the EOS, softmax), a SigLIP-loss model with a
# bidirectional text tower pooled at the final position and a logit bias, SiglipModel's
# architecture (a MAP tower: timm's, in open_clip), and a GAP tower with ln_pre and a biased
# image projection (timm's too).
OPEN_CLIP = {
    "clip": (CLIP, 32, "softmax"),
    "siglip_text": ({**CLIP, "bias_init": -2.0,
                     "text": {**CLIP["text"], "pool": "final", "causal": False}},
                    32, "sigmoid"),
    "siglip_map": (SIGLIP, 64, "sigmoid_chunked"),
    "gap_pre_norm": ({**SIGLIP, "proj_bias": True, "image": {
        **SIGLIP["image"], "pool": "gap", "pre_norm": True, "head": True,
        "posemb": "sincos2d"}}, 64, "sigmoid"),
}


# open_clip's side runs in its own process: no jax there (with the `open_clip` extra, its
# CUDA torch's triton segfaulted on import beside jax and TensorFlow). OPEN_CLIP_PYTHON
# names another environment's interpreter that has open_clip (this one's by default).
_OPEN_CLIP_SIDE = """
import json, sys
import numpy as np, open_clip, torch
from PIL import Image
out, pixels, texts = sys.argv[1], np.load(sys.argv[2]), json.loads(sys.argv[3])
raw = np.load(sys.argv[4])
model, preprocess = open_clip.create_model_from_pretrained("local-dir:" + out)
tokenizer = open_clip.get_tokenizer("local-dir:" + out)
model.eval()
with torch.no_grad():
    tokens = tokenizer(texts)
    np.savez(sys.argv[5], tokens=tokens.numpy(),
             zimg=model.encode_image(torch.stack([preprocess(Image.fromarray(p))
                                                  for p in pixels]), normalize=True).numpy(),
             zraw=model.encode_image(torch.from_numpy(raw), normalize=True).numpy(),
             ztxt=model.encode_text(tokens, normalize=True).numpy(),
             t=float(model.logit_scale.exp()),
             b=float(model.logit_bias) if model.logit_bias is not None else 0.0)
"""


def _open_clip_python() -> str:
    """OPEN_CLIP_PYTHON, or this Python when it has open_clip; the test skips otherwise."""
    import importlib.util
    import sys

    python = os.environ.get("OPEN_CLIP_PYTHON", sys.executable)
    if python == sys.executable and importlib.util.find_spec("open_clip") is None:
        pytest.skip("open_clip is not installed (pip install -e '.[open_clip]', or set "
                    "OPEN_CLIP_PYTHON to a Python that has it)")
    return python


def _run_open_clip(python: str, script: str, *args: str) -> None:
    """`script` in its own process (no jax there, nor our XLA flags)."""
    import subprocess

    subprocess.run([python, "-c", script, *args], check=True,
                   env={k: v for k, v in os.environ.items() if k != "XLA_FLAGS"})


def _exported_open_clip(kind, tokenizer_file, tmp_path):
    from contrastive_jax.export.open_clip_format import export_open_clip

    model_cfg, max_len, loss = OPEN_CLIP[kind]
    config = _config(model_cfg, max_len, loss)
    params = _random_params(config, seed=11)
    return config, params, export_open_clip(config, params, 3, tokenizer_file,
                                            str(tmp_path / "oc"))


@pytest.mark.parametrize("kind", sorted(OPEN_CLIP))
def test_open_clip_export_reads_back_as_our_model(kind, tokenizer_file, tmp_path):
    config, params, out = _exported_open_clip(kind, tokenizer_file, tmp_path)
    back = load_model(f"open_clip:{out}")
    images = np.random.default_rng(2).uniform(-1, 1, (2, 28, 28, 1)).astype(np.float32)
    tokens = back.text_encoder.encode_batch(TEXTS[:2], config.data.max_len)
    want = ModelDef(complete_config(config.model)).bind(params)(images, tokens)
    got = back.model_def.bind(jax.device_get(back.state.params))(np.repeat(images, 3, -1),
                                                                   tokens)
    for a, b in zip(want, got, strict=True):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), atol=1e-5)
    # A logit bias survives (open_clip's init_logit_bias carries the trained b).
    assert (back.config.model.bias_init is None) == (config.model.bias_init is None)
    assert back.step == 3  # the export card's step


@pytest.mark.parametrize("kind", sorted(OPEN_CLIP))
def test_open_clip_loads_our_export_with_our_embeddings(kind, tokenizer_file, tmp_path):
    import json

    python = _open_clip_python()
    config, params, out = _exported_open_clip(kind, tokenizer_file, tmp_path)
    pixels = np.stack(_grey_images(n=3, seed=4, size=(36, 31)))
    raw = np.random.default_rng(2).uniform(-1, 1, (2, 28, 28, 1)).astype(np.float32)
    np.save(tmp_path / "pixels.npy", pixels)
    np.save(tmp_path / "raw.npy", np.repeat(raw, 3, -1).transpose(0, 3, 1, 2))
    _run_open_clip(python, _OPEN_CLIP_SIDE, out, str(tmp_path / "pixels.npy"),
                   json.dumps(TEXTS), str(tmp_path / "raw.npy"), str(tmp_path / "got.npz"))
    got = np.load(tmp_path / "got.npz")
    want_img, want_txt, _ = _ours(config, params, tokenizer_file, list(pixels), TEXTS)
    ours = ModelDef(complete_config(config.model)).bind(params)
    np.testing.assert_array_equal(got["tokens"], ours_tokens := _tokens(config, tokenizer_file))
    np.testing.assert_allclose(got["ztxt"], want_txt, atol=1e-5)
    np.testing.assert_allclose(got["zraw"], np.asarray(ours.encode_image(raw)), atol=1e-5)
    # A resized image: PIL rounds to uint8 before normalising (measured 2e-3 here).
    np.testing.assert_allclose(got["zimg"], want_img, atol=1e-2)
    np.testing.assert_allclose(got["t"], float(ours.temperature()), rtol=1e-6)
    np.testing.assert_allclose(got["b"], float(ours.bias()), rtol=1e-6)
    assert ours_tokens.shape == (len(TEXTS), config.data.max_len)


# open_clip's side of a model open_clip itself wrote: its loader builds the architecture of
# the directory's config, every tensor is perturbed in torch, and the state dict is saved
# back as open_clip's safetensors; its forward on raw inputs is the reference.
_OPEN_CLIP_WRITES = """
import sys
import numpy as np, open_clip, torch
from safetensors.torch import save_file
out, raw, tokens = sys.argv[1], np.load(sys.argv[2]), np.load(sys.argv[3])
torch.manual_seed(0)
model, _ = open_clip.create_model_from_pretrained("local-dir:" + out)
model.eval()
with torch.no_grad():
    for p in model.parameters():
        p.add_(0.05 * torch.randn_like(p))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()},
              out + "/open_clip_model.safetensors")
    text = torch.from_numpy(tokens.astype(np.int64))
    np.savez(sys.argv[4], zimg=model.encode_image(torch.from_numpy(raw), normalize=True).numpy(),
             ztxt=model.encode_text(text, normalize=True).numpy(),
             t=float(model.logit_scale.exp()),
             b=float(model.logit_bias) if model.logit_bias is not None else 0.0)
"""


@pytest.mark.parametrize("kind", sorted(OPEN_CLIP))
def test_a_model_open_clip_wrote_imports_with_its_embeddings(kind, tokenizer_file, tmp_path):
    python = _open_clip_python()
    config, _, out = _exported_open_clip(kind, tokenizer_file, tmp_path)
    raw = np.random.default_rng(3).uniform(-1, 1, (2, 28, 28, 3)).astype(np.float32)
    tokens = _tokens(config, tokenizer_file)
    np.save(tmp_path / "raw.npy", raw.transpose(0, 3, 1, 2))
    np.save(tmp_path / "tokens.npy", tokens)
    _run_open_clip(python, _OPEN_CLIP_WRITES, out, str(tmp_path / "raw.npy"),
                   str(tmp_path / "tokens.npy"), str(tmp_path / "want.npz"))
    want = np.load(tmp_path / "want.npz")
    back = load_model(f"open_clip:{out}")
    ours = back.model_def.bind(jax.device_get(back.state.params))
    np.testing.assert_allclose(np.asarray(ours.encode_image(raw)), want["zimg"], atol=1e-5)
    np.testing.assert_allclose(np.asarray(ours.encode_text(tokens)), want["ztxt"], atol=1e-5)
    np.testing.assert_allclose(float(ours.temperature()), want["t"], rtol=1e-5)
    np.testing.assert_allclose(float(ours.bias()), want["b"], rtol=1e-5, atol=1e-6)


def _tokens(config, tokenizer_file):
    from contrastive_jax.data.text_conventions import for_model
    from contrastive_jax.data.tokenizer import Tokenizer

    return Tokenizer(tokenizer_file, for_model(config)).encode_batch(TEXTS, config.data.max_len)


def test_open_clip_export_refuses_what_open_clip_cannot_compute(tmp_path):
    from contrastive_jax.errors import UserError
    from contrastive_jax.export.open_clip_format import export_open_clip

    no_ln_pre = {**CLIP, "image": {**CLIP["image"], "pre_norm": False}}
    config = _config(no_ln_pre, 32, "softmax")
    with pytest.raises(UserError, match=r"open_clip CLIP: image.pre_norm=False \(open_clip's "):
        export_open_clip(config, {}, 0, "unused.model", str(tmp_path / "oc"))
    assert not os.path.exists(tmp_path / "oc")


def test_open_clip_timm_export_moved_and_refused_configs(tokenizer_file, tmp_path):
    """A moved export still reads back (its timm folder is found beside the config), and a
    timm folder we did not write is one line naming its file and key."""
    import json

    from contrastive_jax.errors import UserError

    config, params, out = _exported_open_clip("siglip_map", tokenizer_file, tmp_path)
    with open(os.path.join(out, "open_clip_config.json"), encoding="utf-8") as f:
        vision = json.load(f)["model_cfg"]["vision_cfg"]
    assert vision["timm_model_name"] == "local-dir:" + os.path.join(out, "timm_vision")
    moved = str(tmp_path / "moved")
    shutil.move(out, moved)
    back = load_model(f"open_clip:{moved}")
    assert back.config.model.image.pool == "map"
    timm_cfg = os.path.join(moved, "timm_vision", "config.json")
    with open(timm_cfg, encoding="utf-8") as f:
        cfg = json.load(f)
    cfg["model_args"] |= {"act_layer": "gelu", "reg_tokens": 4}
    with open(timm_cfg, "w", encoding="utf-8") as f:
        json.dump(cfg, f)
    with pytest.raises(UserError, match=r"timm_vision/config.json: not a timm ViT we compute "
                       r"exactly: unexpected model_args key 'reg_tokens'; model_args "
                       r"act_layer='gelu' \(we compute 'gelu_tanh'\)"):
        load_model(f"open_clip:{moved}")


def test_hf_and_open_clip_imports_read_from_gcs(tokenizer_file, tmp_path, gcs):
    """`hf:gs://...` and `open_clip:gs://...` (a GCS API on loopback): the same model as
    the same files read locally."""
    from contrastive_jax import paths
    from contrastive_jax.export.flat import flatten

    config = _config(SIGLIP, 64, "sigmoid_chunked")
    hf = export_hf(config, _random_params(config, seed=3), 7, tokenizer_file,
                   str(tmp_path / "hf"))
    _, _, open_clip = _exported_open_clip("clip", tokenizer_file, tmp_path)
    for prefix, local in (("hf:", hf), ("open_clip:", open_clip)):
        remote = f"gs://cj-test/imports/{prefix[:-1]}"
        paths.copytree(local, remote)
        want, got = load_model(prefix + local), load_model(prefix + remote)
        assert got.step == want.step and got.config.to_dict() == want.config.to_dict()
        want_params = flatten(jax.device_get(want.state.params))
        got_params = flatten(jax.device_get(got.state.params))
        assert got_params.keys() == want_params.keys()
        for name, value in want_params.items():
            np.testing.assert_array_equal(got_params[name], value, err_msg=prefix + name)
        assert got.text_encoder.encode_batch(TEXTS, 16).tolist() == (
            want.text_encoder.encode_batch(TEXTS, 16).tolist())
