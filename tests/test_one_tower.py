"""CLIPPO: one shared ViT, rendered captions through the training stream, train, eval,
refusals."""

import json

import jax
import numpy as np
import pytest
from flax import nnx
from helpers import fashion_tasks

from contrastive_jax import cli
from contrastive_jax.config import load_config
from contrastive_jax.data.stream import train_dataset
from contrastive_jax.data.tokenizer_setup import ensure_tokenizer
from contrastive_jax.datasets import fashion_mnist_captions as fmc
from contrastive_jax.datasets.catalogue import class_names
from contrastive_jax.errors import ConfigError
from contrastive_jax.evaluate.zeroshot import class_embeddings
from contrastive_jax.models import create_model
from contrastive_jax.models.state import ModelDef
from contrastive_jax.train import loop

DEMO = "configs/demo_clippo.py"
TINY = ["model.embed_dim=16", "model.image.width=32", "model.image.depth=1",
        "model.image.mlp_dim=64", "model.image.num_heads=2", "train.batch_size=16",
        "train.log_every=1", "train.progress_bar=False", "optimizer.warmup_steps=1",
        f"evals.tasks={fashion_tasks()!r}"]


def tiny_clippo(data_dir=None, steps=3, extra=()):
    overrides = TINY + list(extra)
    if data_dir:
        overrides.append(f"data.data_dir={data_dir}")
    return load_config(f"{DEMO}:steps={steps}", overrides)


def test_one_vit_encodes_images_and_rendered_text():
    config = tiny_clippo()
    model = create_model(config.model, rngs=nnx.Rngs(0))
    params = nnx.state(model, nnx.Param).to_pure_dict()
    assert sorted(params) == ["b", "img", "img_head", "t_log"]  # one tower, no text weights
    x = jax.random.normal(jax.random.key(1), (4, 48, 48, 1))
    zimg, ztxt = model(x, x[::-1])
    assert zimg.shape == ztxt.shape == (4, 16)
    np.testing.assert_allclose(zimg[::-1], ztxt, atol=1e-6)  # the same function
    np.testing.assert_allclose(np.linalg.norm(ztxt, axis=-1), 1.0, atol=1e-5)

    graphdef, state = nnx.split(model, nnx.Param)

    def text_only(p):
        return nnx.merge(graphdef, p).encode_text(x).sum()

    grads = jax.grad(text_only)(state).to_pure_dict()
    assert np.abs(grads["img"]["embedding"]["kernel"]).sum() > 0  # text trains the ViT


def test_config_schema_and_one_line_errors():
    config = tiny_clippo()
    assert config.model.name == "one_tower" and "text" not in config.model
    with pytest.raises(ConfigError, match="data.render.enabled"):
        tiny_clippo(extra=["data.render.enabled=False"])
    with pytest.raises(ConfigError, match="font_size 12"):
        tiny_clippo(extra=["data.render.font_size=12"])
    with pytest.raises(ConfigError, match="must equal 'data.image_size'"):
        tiny_clippo(extra=["data.image_size=32"])
    with pytest.raises(ConfigError, match="unknown config key 'model.text'"):
        tiny_clippo(extra=["model.text.width=8"])
    with pytest.raises(ConfigError, match="unknown model 'three'"):
        load_config("configs/demo_siglip.py", ["model.name=three"])
    swapped = load_config("configs/demo_siglip.py", ["model.name=one_tower",
                                                     "data.render.enabled=True"])
    assert "text" not in swapped.model


def test_stream_renders_captions_and_text_pairs_resume(fake_data_dir):
    config = tiny_clippo(fake_data_dir, extra=["data.render.text_pair_fraction=0.5"])
    renderer = ensure_tokenizer(config.data, "/nonexistent")  # renders, loads nothing
    stream = train_dataset(config.data, renderer, global_batch_size=8, seed=3)
    batches = list(stream.take(3).as_numpy_iterator())
    text = batches[0]["text"]
    assert text.shape == (8, 48, 48, 1) and text.dtype == np.float32
    assert text.min() >= -1 and text.max() == 1  # value range; background white
    plain = train_dataset(tiny_clippo(fake_data_dir).data, renderer, global_batch_size=8,
                          seed=3)
    first = next(plain.as_numpy_iterator())
    np.testing.assert_array_equal(first["text"], text)  # same captions, same renders
    swapped = ~np.all(first["image"] == batches[0]["image"], axis=(1, 2, 3))
    for i in np.flatnonzero(swapped):  # a swapped image is another caption of its class
        same = [j for j in range(8) if j != i and first["label"][j] == first["label"][i]]
        assert any(np.array_equal(batches[0]["image"][i], text[j]) for j in same)
    resumed = train_dataset(config.data, renderer, global_batch_size=8, seed=3,
                            start_example=16)
    np.testing.assert_array_equal(next(resumed.as_numpy_iterator())["image"],
                                  batches[2]["image"])


def test_clippo_trains_evaluates_and_refuses_export(fake_data_dir, tmp_path, capsys):
    config = tiny_clippo(fake_data_dir, extra=["data.render.text_pair_fraction=0.25"])
    workdir = str(tmp_path / "clippo")
    result = loop.train(config, workdir)
    assert result["step"] == 3 and 0 <= result["zeroshot/fashion_mnist/top1"] <= 1

    # Zero-shot class embeddings come from rendered prompts through the shared tower.
    run = loop.setup(config, workdir)
    names = class_names(config.data.dataset, fake_data_dir)
    templates = fmc.ZEROSHOT_TEMPLATES[:2]
    classifier = class_embeddings(run.model_def, run.state, run.tokenizer, names, templates,
                                  config.data.max_len, run.mesh)
    prompts = [fmc.fill_template(t, n) for n in names for t in templates]
    rendered = run.tokenizer.encode_batch(prompts)
    assert rendered.shape == (len(prompts), 48, 48, 1)
    model = ModelDef(config.model).bind(jax.device_get(run.state.params))
    direct = np.asarray(model.encode_image(rendered)).reshape(len(names), 2, -1).mean(1)
    direct /= np.linalg.norm(direct, axis=-1, keepdims=True)
    np.testing.assert_allclose(classifier, direct, atol=1e-4)
    run.checkpointer.close()

    assert cli.main(["eval", "--model", workdir]) == 0
    evaluated = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert evaluated["zeroshot/fashion_mnist/top1"] == pytest.approx(
        result["zeroshot/fashion_mnist/top1"])
    assert cli.main(["export", "--model", workdir, "--format", "npz",
                     "--out", str(tmp_path / "out")]) == 2
    assert "export supports two_tower and siglip2 models only" in capsys.readouterr().err


def test_bench_render_and_step_batch_shapes():
    from contrastive_jax.bench.render import bench_render
    from contrastive_jax.bench.train_step import synthetic_batch

    config = tiny_clippo()
    row = bench_render(config.data, batch_size=8, batches=2)
    assert row["examples_per_sec_per_core"] > 0 and row["output_shape"] == [8, 48, 48, 1]
    batch = synthetic_batch(config, 4)
    assert batch["text"].shape == batch["image"].shape == (4, 48, 48, 1)
