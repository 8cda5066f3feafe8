"""NaFlex models and transformers' Siglip2Model, both ways, fed as transformers feeds it
(processor outputs passed whole): square and non-square images at two budgets, embeddings
and logits at atol 1e-5.

A `siglip2` directory's AutoTokenizer is always Gemma's BPE (see export/hf_siglip2.py), so
our export's text goes through its T5Tokenizer and its images through the saved processor's
image processor; a Siglip2Processor built with our tokenizer is called whole."""

import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow as tf
from helpers import tiny_config

pytest.importorskip("transformers")
torch = pytest.importorskip("torch")
from PIL import Image  # noqa: E402

from contrastive_jax.data.naflex import naflex_patches  # noqa: E402
from contrastive_jax.data.tokenizer import train_tokenizer  # noqa: E402
from contrastive_jax.errors import UserError  # noqa: E402
from contrastive_jax.export.hf import export_hf  # noqa: E402
from contrastive_jax.export.model_spec import load_model  # noqa: E402
from contrastive_jax.models import complete_config  # noqa: E402
from contrastive_jax.models.naflex import NaFlexImages  # noqa: E402
from contrastive_jax.models.state import ModelDef  # noqa: E402

# Siglip2Processor passes its own default patch_size (16) to its image processor: a model
# with another patch needs `patch_size=` in the call. A 4x4 table: image_size 64 / patch 16.
# Siglip2's pipeline pads text to 64 tokens: max_len 64.
PATCH = 16
NAFLEX = {"embed_dim": 32, "bias_init": -3.0,
          "image": {"naflex": True, "pool": "map", "head": False, "width": 32, "depth": 2,
                    "mlp_dim": 48, "num_heads": 2, "patch_size": PATCH, "image_size": 64,
                    "channels": 3},
          "text": {"pool": "final", "head": True, "width": 24, "num_heads": 3, "depth": 2,
                   "max_len": 64}}
TEXTS = ["a photo of a bag.", "An Ankle BOOT, seen from above!!", "a t-shirt/top", "coat"]
BUDGETS = (16, 36)  # below and above the table's own 16 positions
SHAPES = [(80, 80), (48, 144), (144, 48), (5, 3), (75, 106)]  # square, 1:3, 3:1, tiny, odd


def _images(seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (*s, 3), dtype=np.uint8) for s in SHAPES]


@pytest.fixture(scope="module")
def tokenizer_file(tmp_path_factory):
    words = "a photo of the bag ankle boot seen from above t-shirt top coat sandal dress".split()
    rng = np.random.default_rng(0)
    texts = [" ".join(rng.choice(words, 6)) for _ in range(300)]
    return train_tokenizer(texts, str(tmp_path_factory.mktemp("tok") / "tok"), vocab_size=64)


def _config(**image):
    return tiny_config(model={**NAFLEX, "image": {**NAFLEX["image"], **image}},
                       data={"max_len": 64, "image_size": 64, "channels": 3},
                       loss={"name": "sigmoid"})


def _naflex_batch(images, budget, value_range=(-1.0, 1.0)):
    feats = [naflex_patches(tf.constant(x), PATCH, budget, value_range) for x in images]
    return NaFlexImages(*(jnp.asarray(np.stack([f[k].numpy() for f in feats]))
                          for k in ("patches", "mask", "shape")))


def _embed(model, images, tokens):
    zimg, ztxt = (np.asarray(z) for z in (model.encode_image(images), model.encode_text(tokens)))
    logits = zimg @ ztxt.T * float(model.temperature()) + float(model.bias())
    return zimg, ztxt, logits


@pytest.fixture(scope="module")
def exported(tokenizer_file, tmp_path_factory):
    config = _config()
    params, _ = ModelDef.init(complete_config(config.model), jax.random.key(3))
    rng = np.random.default_rng(3)  # random biases etc., so that none hides behind zero init
    params = jax.tree.map(lambda x: np.asarray(x) + 0.05 * rng.standard_normal(
        x.shape, np.float32), params)
    out = str(tmp_path_factory.mktemp("naflex") / "hf")
    export_hf(config, params, 7, tokenizer_file, out)
    return config, params, out


def test_processor_output_passed_whole_gives_our_embeddings(exported, tokenizer_file):
    from transformers import AutoModel, AutoProcessor, T5Tokenizer

    from contrastive_jax.data.text_conventions import for_model
    from contrastive_jax.data.tokenizer import Tokenizer

    config, params, out = exported
    model = AutoModel.from_pretrained(out).eval()
    image_processor = AutoProcessor.from_pretrained(out).image_processor
    tokenizer = T5Tokenizer.from_pretrained(out)
    assert type(model).__name__ == "Siglip2Model"
    ours = ModelDef(complete_config(config.model)).bind(params)
    tokens = Tokenizer(tokenizer_file, for_model(config)).encode_batch(TEXTS, 64)
    images = _images()
    for budget in BUDGETS:
        inputs = {**image_processor(images=[Image.fromarray(x) for x in images],
                                    max_num_patches=budget, return_tensors="pt"),
                  **tokenizer(TEXTS, padding="max_length", return_tensors="pt")}
        assert set(inputs) == {"input_ids", "pixel_values", "pixel_attention_mask",
                               "spatial_shapes"}  # trained unmasked: no text mask
        np.testing.assert_array_equal(inputs["input_ids"].numpy(), tokens)
        batch = _naflex_batch(images, budget)
        # Our preprocessing is the processor's, exactly.
        np.testing.assert_array_equal(np.asarray(batch.patches), inputs["pixel_values"])
        np.testing.assert_array_equal(np.asarray(batch.shapes), inputs["spatial_shapes"])
        with torch.no_grad():
            got = model(**inputs)
        want = _embed(ours, batch, tokens)
        for a, b in zip(want, (got.image_embeds, got.text_embeds, got.logits_per_image),
                        strict=True):
            np.testing.assert_allclose(b.numpy(), a, atol=1e-5, err_msg=f"budget {budget}")


def test_hf_export_reads_back_as_our_model(exported, tokenizer_file):
    config, params, out = exported
    model = load_model(f"hf:{out}")
    assert model.config.model.image.naflex and model.config.model.image.image_size == 64
    assert model.config.data.value_range == (-1.0, 1.0)
    ours = ModelDef(complete_config(config.model)).bind(params)
    theirs = model.model_def.bind(jax.device_get(model.state.params))
    tokens = model.text_encoder.encode_batch(TEXTS, 64)
    for budget in BUDGETS:
        batch = _naflex_batch(_images(seed=budget), budget)
        for a, b in zip(_embed(ours, batch, tokens), _embed(theirs, batch, tokens),
                        strict=True):
            np.testing.assert_allclose(b, a, atol=1e-5)


def test_a_siglip2_model_transformers_built_imports_with_its_embeddings(tokenizer_file,
                                                                       tmp_path):
    from transformers import Siglip2Config, Siglip2Model, Siglip2Processor, T5Tokenizer
    from transformers import Siglip2ImageProcessorPil as ImageProcessor

    tower = dict(hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                 num_attention_heads=2, hidden_act="gelu_pytorch_tanh", layer_norm_eps=1e-6)
    text = dict(tower, vocab_size=64, max_position_embeddings=64, pad_token_id=0,
                eos_token_id=1, bos_token_id=None, projection_size=32)
    hf = Siglip2Model(Siglip2Config(text_config=text, vision_config=dict(
        tower, patch_size=PATCH, num_patches=25, num_channels=3))).eval()  # a 5x5 table
    with torch.no_grad():
        for p in hf.parameters():
            p.add_(0.05 * torch.randn_like(p))
    out = str(tmp_path / "siglip2")
    hf.save_pretrained(out)
    # As on the Hub: the sentencepiece model beside the tokenizer files; no attention mask
    # (our towers read the text unmasked, as SigLIP's do).
    shutil.copyfile(tokenizer_file, os.path.join(out, "spiece.model"))
    tokenizer = T5Tokenizer.from_pretrained(out, extra_ids=0, model_max_length=64,
                                            model_input_names=["input_ids"])
    tokenizer.save_pretrained(out)
    processor = Siglip2Processor(image_processor=ImageProcessor(patch_size=PATCH),
                                 tokenizer=tokenizer)
    model = load_model(f"hf:{out}")
    assert model.config.model.image.image_size == 5 * PATCH
    ours = model.model_def.bind(jax.device_get(model.state.params))
    for budget in BUDGETS:
        inputs = processor(text=TEXTS, images=[Image.fromarray(x) for x in _images(budget)],
                           max_num_patches=budget, return_tensors="pt")
        with torch.no_grad():
            want = hf(**inputs)
        batch = NaFlexImages(*(jnp.asarray(inputs[k].numpy()) for k in (
            "pixel_values", "pixel_attention_mask", "spatial_shapes")))
        tokens = model.text_encoder.encode_batch(TEXTS, 64)
        np.testing.assert_array_equal(tokens, inputs["input_ids"].numpy())
        for a, b in zip(_embed(ours, batch, tokens),
                        (want.image_embeds, want.text_embeds, want.logits_per_image),
                        strict=True):
            np.testing.assert_allclose(a, b.numpy(), atol=1e-5, err_msg=f"budget {budget}")


def test_export_refuses_what_siglip2_cannot_compute(tokenizer_file, tmp_path):
    config = _config(pool="gap")
    params, _ = ModelDef.init(complete_config(config.model), jax.random.key(0))
    with pytest.raises(UserError, match=r"Siglip2Model: image.pool='gap'"):
        export_hf(config, jax.device_get(params), 0, tokenizer_file, str(tmp_path / "x"))


def test_native_export_reads_back_as_our_model(exported, tokenizer_file, tmp_path):
    from contrastive_jax.export.native import export_weights

    config, params, _ = exported
    out = export_weights("npz", config, params, 7, tokenizer_file, str(tmp_path / "npz"))
    model = load_model(out)
    assert model.config.model.image.naflex
    ours = ModelDef(complete_config(config.model)).bind(params)
    theirs = model.model_def.bind(jax.device_get(model.state.params))
    batch = _naflex_batch(_images(seed=1), BUDGETS[1])
    np.testing.assert_allclose(np.asarray(theirs.encode_image(batch)),
                               np.asarray(ours.encode_image(batch)), atol=1e-6)
