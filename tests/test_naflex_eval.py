"""NaFlex eval and embed at patch budgets (`max_num_patches`, `--max-num-patches`), the
Siglip2 export reproducing them, and the variable-aspect demo data (fashion_mnist_aspect)."""

import json
import os

import jax
import numpy as np
import pytest
import tensorflow as tf
from helpers import tiny_config
from PIL import Image

from contrastive_jax.cli import main
from contrastive_jax.config.eval_budgets import at_budgets
from contrastive_jax.config.eval_tasks import parse_task
from contrastive_jax.data.naflex import naflex_patches
from contrastive_jax.data.tokenizer import train_tokenizer
from contrastive_jax.datasets import fashion_mnist_aspect as fma
from contrastive_jax.datasets import fashion_mnist_captions as fmc
from contrastive_jax.errors import ConfigError
from contrastive_jax.export.native import export_weights
from contrastive_jax.models import complete_config
from contrastive_jax.models.naflex import NaFlexImages
from contrastive_jax.models.state import ModelDef

# 7x7 patches, a 4x4 position table (16 patches, the default budget); grey, as the data.
NAFLEX = {"embed_dim": 32, "bias_init": -3.0,
          "image": {"naflex": True, "pool": "map", "head": False, "width": 32, "depth": 1,
                    "mlp_dim": 48, "num_heads": 2, "patch_size": 7, "image_size": 28},
          "text": {"pool": "final", "head": True, "max_len": 64}}
BUDGETS = (4, 16)


def _config(naflex=True, **image):
    model = {**NAFLEX, "image": {**NAFLEX["image"], "naflex": naflex, **image}}
    return tiny_config(model=model, data={"max_len": 64}, loss={"name": "sigmoid"})


@pytest.fixture(scope="module")
def aspect_dir(tmp_path_factory, fake_fashion_mnist_source):
    out = str(tmp_path_factory.mktemp("aspect"))
    fma.build_fashion_mnist_aspect(out, source=fake_fashion_mnist_source)
    return out


def test_aspect_canvases_hold_the_items_unresized(aspect_dir, fake_fashion_mnist_source):
    from contrastive_jax.datasets.catalogue import get_builder, read_split

    builder = get_builder("fashion_mnist_aspect", aspect_dir)
    items, labels = fmc.load_split(fake_fashion_mnist_source, "test")
    examples = list(read_split(builder, "test").as_numpy_iterator())
    assert len(examples) == len(items) == 50
    for i, ex in enumerate(examples):
        h, w, top, left = fma.canvas_of(f"test/{i:06d}")
        image = ex["image"][..., 0]
        assert image.shape == (h, w) and min(h, w) == 28 and 28 <= max(h, w) <= 84
        np.testing.assert_array_equal(image[top:top + 28, left:left + 28], items[i])
        rest = image.copy()
        rest[top:top + 28, left:left + 28] = fma.background_of(items[i])
        assert (rest == fma.background_of(items[i])).all()
        assert ex["label"] == labels[i]
        assert ex["caption"].decode() == fmc.caption_for("test", i, int(labels[i]))
    # Over many uids: both orientations, aspect up to 3:1 each way, every position.
    canvases = np.array([fma.canvas_of(f"train/{i:06d}") for i in range(2000)])
    wide, tall = canvases[:, 1] > 28, canvases[:, 0] > 28
    assert wide.mean() > 0.4 and tall.mean() > 0.4 and not (wide & tall).any()
    assert canvases[:, :2].max() == 84 and (canvases[:, 2:] == 0).any(axis=1).all()
    assert (canvases[:, 2:] + 28 <= canvases[:, :2]).all()  # the item fits inside
    assert canvases[wide, 3].max() > 40 and canvases[tall, 2].max() > 40


def test_budgets_name_a_run_each_and_fit_the_model():
    spec = {"kind": "zeroshot", "name": "x", "data": {"kind": "tfds", "name": "d"}}
    naflex, fixed = (complete_config(_config(n).model) for n in (True, False))
    runs = at_budgets(parse_task({**spec, "max_num_patches": [4, 9]}, 0), naflex)
    assert [(r["name"], r["max_num_patches"], r["naflex_patch"]) for r in runs] == [
        ("x@4", 4, 7), ("x@9", 9, 7)]
    (run,) = at_budgets(parse_task(spec, 0), naflex)  # the table's own 4 x 4
    assert (run["name"], run["max_num_patches"]) == ("x", 16)
    (run,) = at_budgets(parse_task(spec, 0), fixed)  # square images, as before
    assert (run["name"], run["max_num_patches"], run["naflex_patch"]) == ("x", None, None)
    with pytest.raises(ConfigError, match="is for NaFlex models"):
        at_budgets(parse_task({**spec, "max_num_patches": 16}, 0), fixed)
    with pytest.raises(ConfigError, match=r"max_num_patches of zeroshot task 'x'=257 is more"):
        at_budgets(parse_task({**spec, "max_num_patches": 257}, 0), naflex)
    for bad in (0, [], [4, 4], "16", 2.0):
        with pytest.raises(ConfigError, match=r"evals.tasks\[0\].max_num_patches"):
            parse_task({**spec, "max_num_patches": bad}, 0)
    with pytest.raises(ConfigError, match="unknown for a retrieval task"):
        parse_task({**spec, "kind": "retrieval", "max_num_patches": 16}, 0)


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """A random tiny NaFlex model as a native (npz) export and as a Siglip2Model (hf)."""
    pytest.importorskip("transformers")
    from contrastive_jax.export.hf import export_hf

    root = tmp_path_factory.mktemp("exports")
    words = "a photo of the bag ankle boot t-shirt coat sandal dress image blurry".split()
    rng = np.random.default_rng(0)
    tokenizer = train_tokenizer([" ".join(rng.choice(words, 6)) for _ in range(300)],
                                str(root / "tok"), vocab_size=64)
    config = _config()
    params, _ = ModelDef.init(complete_config(config.model), jax.random.key(5))
    params = jax.tree.map(lambda x: np.asarray(x) + 0.05 * rng.standard_normal(
        x.shape, np.float32), params)  # no bias hides behind a zero init
    native = export_weights("npz", config, params, 3, tokenizer, str(root / "npz"))
    hf = str(root / "hf")
    export_hf(config, params, 3, tokenizer, hf)
    return native, hf


def _folder(root):
    """An image folder of two classes, PNGs of several sizes (one smaller than a patch)."""
    rng = np.random.default_rng(1)
    for name, sizes in (("bag", [(28, 84), (5, 3), (40, 28)]), ("coat", [(84, 28), (28, 28)])):
        os.makedirs(root / name)
        for i, size in enumerate(sizes):
            Image.fromarray(rng.integers(0, 256, size, np.uint8)).save(root / name / f"{i}.png")
    return root


def _eval(argv, capsys):
    assert main(["eval", *argv]) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_eval_at_budgets_and_the_siglip2_export_reproduces_it(exports, aspect_dir, tmp_path,
                                                              capsys):
    native, hf = exports
    aspect = {"kind": "tfds", "name": "fashion_mnist_aspect", "data_dir": aspect_dir}
    tasks = [{"kind": "zeroshot", "name": "aspect", "data": aspect, "batch_size": 16,
              "prompts": "fashion_mnist_heldout", "max_num_patches": list(BUDGETS)}]
    fewshot = {"kind": "fewshot", "name": "aspect", "data": aspect, "batch_size": 16,
               "shots": [1], "seeds": 1, "max_num_patches": 9}
    ours = _eval(["--model", native, "--out", str(tmp_path / "ours"),
                  f"--config.evals.tasks={json.dumps([*tasks, fewshot])}"], capsys)
    assert 0 <= ours["fewshot/aspect@9/1shot"] <= 1
    report = json.load(open(tmp_path / "ours" / "report.json"))
    for b in BUDGETS:
        key = f"zeroshot/aspect@{b}"
        assert {"name": f"aspect@{b}", "kind": "zeroshot", "metric": f"{key}/top1",
                "max_num_patches": b, "headline": ours[f"{key}/top1"]} in report["tasks"]
        assert report["zeroshot"][f"aspect@{b}"]["count"] == 50
    markdown = open(tmp_path / "ours" / "report.md").read()
    assert "| aspect@4 | zeroshot | top1 |" in markdown
    assert "| aspect@16 | zeroshot | top1 |" in markdown
    # Siglip2Model read back (RGB, its processor's budget rule), the flag over the task's key.
    theirs = _eval(["--model", f"hf:{hf}", "--out", str(tmp_path / "theirs"),
                    f"--config.evals.tasks={json.dumps(tasks)}", "--max-num-patches", "16"],
                   capsys)
    assert not any("aspect@4" in k for k in theirs)
    for metric in ("top1", "top5"):
        assert theirs[f"zeroshot/aspect@16/{metric}"] == ours[f"zeroshot/aspect@16/{metric}"]
    confusion = json.load(open(tmp_path / "theirs" / "report.json"))["zeroshot"]["aspect@16"]
    assert confusion["confusion"] == report["zeroshot"]["aspect@16"]["confusion"]


def test_embed_at_budgets_is_the_models_patch_sequences(exports, tmp_path, capsys):
    from contrastive_jax.export.model_spec import load_model

    native, _ = exports
    folder = _folder(tmp_path / "images")
    out = str(tmp_path / "z.npy")
    assert main(["embed", "--model", native, "--images", str(folder), "--out", out,
                 "--max-num-patches", *map(str, BUDGETS), "--batch-size", "3"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert [r["max_num_patches"] for r in summary["runs"]] == list(BUDGETS)
    model = load_model(native)
    files = open(tmp_path / "z@4.txt").read().split()
    images = [np.asarray(Image.open(f))[..., None] for f in files]
    bound = model.model_def.bind(jax.device_get(model.state.params))
    for b in BUDGETS:
        feats = [naflex_patches(tf.constant(x), 7, b) for x in images]
        batch = NaFlexImages(*(np.stack([f[k].numpy() for f in feats])
                               for k in ("patches", "mask", "shape")))
        np.testing.assert_allclose(np.load(tmp_path / f"z@{b}.npy"),
                                   np.asarray(bound.encode_image(batch)), atol=1e-5)


def test_a_budget_for_a_fixed_size_model_or_out_of_range_is_one_line(exports, tmp_path,
                                                                      capsys):
    native, _ = exports
    config = _config(naflex=False)
    params, _ = ModelDef.init(complete_config(config.model), jax.random.key(0))
    tokenizer = os.path.join(native, "tokenizer.model")
    fixed = export_weights("npz", config, jax.device_get(params), 0, tokenizer,
                           str(tmp_path / "fixed"))
    task = {"kind": "zeroshot", "name": "x", "data": {"kind": "image_folder",
                                                      "path": str(_folder(tmp_path / "f"))}}
    for model, budget, error in ((fixed, "16", "--max-num-patches is for NaFlex models"),
                                 (native, "257", "--max-num-patches=257 is more than 16x")):
        assert main(["eval", "--model", model, f"--config.evals.tasks={json.dumps([task])}",
                     "--max-num-patches", budget]) == 2
        err = capsys.readouterr().err.strip()
        assert error in err and len(err.splitlines()) == 1
