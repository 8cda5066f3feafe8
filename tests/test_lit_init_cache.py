"""LiT: towers initialised from checkpoints, and training on cached image embeddings."""

import json
import os

import jax
import ml_collections
import numpy as np
import pytest
from helpers import tiny_config
from test_big_vision_import import MODEL, big_vision_npz

from contrastive_jax.export.flat import flatten
from contrastive_jax.models.state import ModelDef
from contrastive_jax.train import loop
from contrastive_jax.train.init_from import InitFromError, init_params, load_source


def _config(data_dir, **train):
    return tiny_config(
        data={"data_dir": data_dir, "tokenizer": {"vocab_size": 64}, "shuffle_buffer": 64},
        train={"steps": 3, "checkpoint_every": 3, **train},
        optimizer={"warmup_steps": 1},
    )


def _init(**kw):
    base = {"path": "", "tower": "both", "reinit": (), "drop_heads": False}
    return ml_collections.ConfigDict({**base, **kw})


@pytest.fixture(scope="module")
def source_workdir(trained_workdir):
    """A tiny two-tower run with an orbax checkpoint: the session's trained workdir
    (tiny_config's model, the one `_config` trains), shared with the export and eval
    tests, which only read it too."""
    return trained_workdir


def test_init_from_workdir_copies_one_tower(source_workdir):
    source = load_source(os.path.join(source_workdir, "checkpoints"))  # the folder works too
    fresh, _ = ModelDef.init(tiny_config().model, jax.random.key(7))
    cfg = _init(path=source_workdir, tower="image", reinit=(r"^img/encoder/encoder_norm/",))
    params, copied = init_params(fresh, cfg, source)
    out, before = flatten(params), flatten(fresh)
    assert copied and all(n.startswith(("img/", "img_head/")) for n in copied)
    for name, value in out.items():
        if name.startswith(("img/", "img_head/")) and "encoder_norm" not in name:
            np.testing.assert_array_equal(value, source[name], err_msg=name)
            assert not np.array_equal(value, before[name]), name
        else:  # text tower, t, b and the re-initialised norm keep their fresh values
            np.testing.assert_array_equal(value, before[name], err_msg=name)


def test_init_from_big_vision_npz_with_dropped_head(tmp_path):
    theirs, _ = ModelDef.init(MODEL, jax.random.key(1))
    path = str(tmp_path / "bv.npz")
    big_vision_npz(jax.device_get(theirs), path)
    fresh, _ = ModelDef.init(MODEL, jax.random.key(2))
    params, _ = init_params(fresh, _init(path=path, tower="text", drop_heads=True))
    out, before, src = flatten(params), flatten(fresh), flatten(theirs)
    for name, value in out.items():
        want = src if name.startswith("txt/") else before  # txt_head dropped: fresh
        np.testing.assert_array_equal(value, want[name], err_msg=name)


def test_init_from_errors_name_the_param(tmp_path):
    fresh, _ = ModelDef.init(tiny_config().model, jax.random.key(0))
    source = flatten(fresh)
    bad = dict(source, **{"img/embedding/kernel": np.zeros((3, 3, 1, 32), np.float32)})
    with pytest.raises(InitFromError, match=r"'img/embedding/kernel' has shape \(3, 3, 1, 32\)"):
        init_params(fresh, _init(path="src", tower="image"), bad)
    missing = {k: v for k, v in source.items() if k != "txt_head/kernel"}
    with pytest.raises(InitFromError, match="no parameter 'txt_head/kernel'"):
        init_params(fresh, _init(path="src", tower="text"), missing)
    with pytest.raises(InitFromError, match="does not exist"):
        load_source(str(tmp_path / "nowhere"))


def test_init_from_an_rgb_source_folds_its_patch_kernel_for_a_grey_model():
    """Exports of grey models are RGB; a grey model initialised from an RGB source sums the
    patch kernel over the channels, and embeds a grey image as the RGB model embeds it
    replicated to three channels."""
    rgb_model = tiny_config(model={"image": {"channels": 3}}).model
    rgb, rest = ModelDef.init(rgb_model, jax.random.key(3))
    grey, _ = ModelDef.init(tiny_config().model, jax.random.key(4))
    params, copied = init_params(grey, _init(path="rgb", tower="image"), flatten(rgb))
    assert "img/embedding/kernel" in copied
    images = np.random.default_rng(0).uniform(-1, 1, (4, 28, 28, 1)).astype(np.float32)
    got = ModelDef(tiny_config().model).bind(params).encode_image(images)
    want = ModelDef(rgb_model).bind(rgb, rest).encode_image(np.repeat(images, 3, axis=-1))
    np.testing.assert_allclose(got, want, atol=1e-5)


def _losses(workdir):
    with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
        return [json.loads(line)["train/loss"] for line in f if "train/loss" in line]


def test_cached_embeddings_train_like_the_locked_tower(fake_data_dir, source_workdir, tmp_path):
    lit = {"locked": {"image": True}, "init_from": {"path": source_workdir, "tower": "image"}}
    runs = {}
    for cache in (False, True):
        workdir = str(tmp_path / f"cache_{cache}")
        config = _config(fake_data_dir, embedding_cache={"enabled": cache}, **lit)
        loop.train(config, workdir)
        runs[cache] = _losses(workdir)
    assert len(runs[True]) == 3
    np.testing.assert_allclose(runs[True], runs[False], rtol=1e-5)
    with np.load(os.path.join(tmp_path, "cache_True", "embedding_cache",
                              "fashion_mnist_captions_train.npz")) as f:
        assert f["embedding"].shape == (200, 16) and len(set(f["uid"])) == 200
        np.testing.assert_allclose(np.linalg.norm(f["embedding"], axis=1), 1.0, rtol=1e-5)


def test_cached_embeddings_of_a_folder_source(source_workdir, tmp_path):
    """The cache and the stream with it work for `data.sources` too (here a folder of PNGs)."""
    import tensorflow as tf

    rng = np.random.default_rng(0)
    names = ["coat", "dress", "bag", "shirt"]
    rows = []
    (tmp_path / "img").mkdir()
    for i in range(32):
        pixels = rng.integers(0, 255, (28, 28, 1), dtype=np.uint8)
        (tmp_path / "img" / f"{i}.png").write_bytes(tf.io.encode_png(pixels).numpy())
        rows.append({"image": f"img/{i}.png", "caption": f"a photo of a {names[i % 4]}",
                     "uid": f"f{i:02d}", "label": i % 4})
    (tmp_path / "t.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    lit = {"locked": {"image": True}, "init_from": {"path": source_workdir, "tower": "image"}}
    runs = {}
    for cache in (False, True):
        workdir = str(tmp_path / f"cache_{cache}")
        config = _config(None, steps=2, embedding_cache={"enabled": cache}, **lit)
        config.data.update(sources=({"kind": "table", "path": str(tmp_path / "t.jsonl")},),
                           channels=1, image_size=28)
        config.data.tokenizer.vocab_size = 40
        loop.train(config, workdir)
        runs[cache] = _losses(workdir)
    assert len(runs[True]) == 2
    np.testing.assert_allclose(runs[True], runs[False], rtol=1e-5)
    (cache_path,) = os.listdir(os.path.join(tmp_path, "cache_True", "embedding_cache"))
    assert cache_path.startswith("sources_")
    with np.load(os.path.join(tmp_path, "cache_True", "embedding_cache", cache_path)) as f:
        assert sorted(f["uid"]) == [r["uid"] for r in rows]
