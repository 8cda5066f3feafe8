"""big_vision NaFlex (SigLIP 2) `.npz` import: naflex_vit.py's names and layouts, and the
same embeddings as big_vision's own module where its code can be imported.

big_vision is not on PyPI: the module test runs when `big_vision` is importable (a checkout
on PYTHONPATH) and is skipped otherwise; the names test always runs."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_big_vision_import import MODEL, big_vision_npz

from contrastive_jax.export.big_vision import load_big_vision
from contrastive_jax.models import complete_config
from contrastive_jax.models.naflex import NaFlexImages
from contrastive_jax.models.state import ModelDef

P, GRID = 4, 4  # a 4x4 position table of 4x4 RGB patches
NAFLEX = {**MODEL, "image": {**MODEL["image"], "naflex": True, "patch_size": P,
                             "image_size": P * GRID, "channels": 3}}
SHAPES = [(4, 4), (2, 7), (6, 2), (1, 1)]  # patch grids: the table's, wide, tall, tiny


def _batch(length=20, seed=0):
    rng = np.random.default_rng(seed)
    patches = rng.uniform(-1, 1, (len(SHAPES), length, P * P * 3)).astype(np.float32)
    mask = np.zeros((len(SHAPES), length), np.int32)
    for i, (h, w) in enumerate(SHAPES):
        mask[i, :h * w] = 1
    return NaFlexImages(jnp.asarray(patches), jnp.asarray(mask), jnp.asarray(SHAPES))


def _naflex_npz(params, path, scan=False):
    """big_vision's names (as test_big_vision_import writes them), with naflex_vit.py's
    layouts: the patch Dense as it is, the position table [g, g, width]."""
    written = big_vision_npz(params, path, scan=scan)
    pos = written["params/img/pos_embedding"]
    written["params/img/pos_embedding"] = pos.reshape(GRID, GRID, pos.shape[-1])
    np.savez(path, **written)
    return written


@pytest.mark.parametrize("scan", [False, True])
def test_naflex_checkpoint_gives_our_embeddings(tmp_path, scan):
    config = complete_config(NAFLEX)
    params = jax.tree.map(np.asarray, ModelDef.init(config, jax.random.key(2))[0])
    written = _naflex_npz(params, str(tmp_path / "bv.npz"), scan=scan)
    assert written["params/img/embedding/kernel"].shape == (P * P * 3, 32)
    assert written["params/img/pos_embedding"].shape == (GRID, GRID, 32)
    model, imported = load_big_vision(str(tmp_path / "bv.npz"))
    assert model["image"] | {"naflex": True} == model["image"]
    assert (model["image"]["patch_size"], model["image"]["image_size"],
            model["image"]["channels"]) == (P, P * GRID, 3)
    ours = ModelDef(config).bind(params)
    theirs = ModelDef(complete_config(model)).bind(imported)
    batch = _batch()
    np.testing.assert_allclose(np.asarray(theirs.encode_image(batch)),
                               np.asarray(ours.encode_image(batch)), atol=1e-6)


def test_big_vision_naflex_module_gives_our_embeddings(tmp_path):
    """big_vision's own naflex_vit, randomly initialised, saved as big_vision saves it
    (flattened `params/img/...`), imported: its outputs, ours, atol 1e-5."""
    naflex_vit = pytest.importorskip("big_vision.models.proj.image_text.naflex_vit")
    from flax.traverse_util import flatten_dict

    bv = naflex_vit.Model(num_classes=24, width=32, depth=2, mlp_dim=48, num_heads=2,
                          pool_type="map", posemb=f"learn_2d({GRID * 4})", nposemb=GRID,
                          head_zeroinit=False)
    batch = _batch()
    rows = np.arange(batch.patches.shape[1])[None, :]
    widths = np.asarray(SHAPES)[:, 1:]
    yabs, xabs = (np.where(np.asarray(batch.mask) == 1, c, 0)
                  for c in (rows // widths, rows % widths))
    inputs = (batch.patches, batch.mask, jnp.asarray(yabs), jnp.asarray(xabs))
    variables = bv.init(jax.random.key(7), inputs)
    rng = np.random.default_rng(7)  # non-zero biases, so that none hides behind zero init
    img = {k: np.asarray(v) + 0.05 * rng.standard_normal(v.shape).astype(np.float32)
           for k, v in flatten_dict(variables["params"], sep="/").items()}
    want, _ = bv.apply({"params": jax.tree.map(jnp.asarray, _unflat(img))}, inputs)

    # The text tower and t, b: any of ours, written with big_vision's names.
    config = complete_config({**NAFLEX, "image": {**NAFLEX["image"], "width": 32}})
    params = jax.tree.map(np.asarray, ModelDef.init(config, jax.random.key(2))[0])
    written = _naflex_npz(params, str(tmp_path / "ours.npz"))
    written = {k: v for k, v in written.items() if not k.startswith("params/img/")}
    written |= {f"params/img/{k}": v for k, v in img.items()}
    np.savez(tmp_path / "bv.npz", **written)
    model, imported = load_big_vision(str(tmp_path / "bv.npz"))
    ours = ModelDef(complete_config(model)).bind(imported)
    want = np.asarray(want) / np.linalg.norm(np.asarray(want), axis=-1, keepdims=True)
    np.testing.assert_allclose(np.asarray(ours.encode_image(batch)), want, atol=1e-5)


def _unflat(flat):
    out = {}
    for key, value in flat.items():
        node = out
        *parents, leaf = key.split("/")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return out
