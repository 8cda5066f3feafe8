"""Export to npz / safetensors: round trip, zero-shot parity with the checkpoint, bad input;
the weights-only restore that export and eval use."""

import os

import jax
import numpy as np
import pytest

from contrastive_jax import cli
from contrastive_jax.checkpoints.store import (
    Checkpointer,
    CheckpointMismatchError,
    restore_params,
    restore_weights,
    single_device_mesh,
)
from contrastive_jax.config.workdir import load_workdir_config
from contrastive_jax.evaluate.model_eval import evaluate_model
from contrastive_jax.export import FORMATS, export_checkpoint, load_exported
from contrastive_jax.export.flat import flatten
from contrastive_jax.models.state import weights_state_shapes
from contrastive_jax.parallel.mesh import create_mesh
from contrastive_jax.train.init_state import create_train_state
from contrastive_jax.train.optimizer import create_optimizer


def test_weights_restore_skips_the_optimizer_and_equals_the_full_restore(trained_workdir):
    config = load_workdir_config(trained_workdir)
    mesh = create_mesh(config.mesh)
    tx, _ = create_optimizer(config.optimizer, config.train.steps)
    state, shardings = create_train_state(config, tx, mesh)
    checkpointer = Checkpointer(trained_workdir, config)
    full, meta_full = checkpointer.restore(state, shardings, step=3)
    checkpointer.close()
    shapes, weight_shardings = weights_state_shapes(config, mesh)
    assert shapes.opt_state is None  # shapes only: nothing computed, no optimizer state
    assert all(isinstance(x, jax.ShapeDtypeStruct) for x in jax.tree.leaves(shapes))
    checkpointer = Checkpointer(trained_workdir, config)
    weights, meta = checkpointer.restore_weights(shapes, weight_shardings, step=3)
    checkpointer.close()
    assert meta == meta_full and int(weights.step) == 3 and weights.opt_state is None
    got = jax.tree_util.tree_leaves_with_path((weights.params, weights.rest))
    want = jax.tree.leaves((full.params, full.rest))
    assert len(got) == len(want) > 0
    for (path, a), b in zip(got, want, strict=True):
        assert a.sharding == b.sharding, jax.tree_util.keystr(path)
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b),
                                      err_msg=jax.tree_util.keystr(path))
    other = load_workdir_config(trained_workdir)
    other.model.embed_dim += 8
    shapes, weight_shardings = weights_state_shapes(other, mesh)
    with pytest.raises(CheckpointMismatchError, match="model.embed_dim"):
        Checkpointer(trained_workdir, other).restore_weights(shapes, weight_shardings)


def test_one_weights_restore_with_the_runs_config_on_any_mesh(trained_workdir):
    """`restore_weights` (eval, export, data score/dedup, init_from) reads the run's config
    with its overrides; on the default mesh and on one device it gives the same weights."""
    config, mesh, state = restore_weights(trained_workdir, step=3,
                                          overrides=["evals.tasks=[]"])
    assert config.evals.tasks == [] and config.train.steps == 6
    assert mesh.size == len(jax.devices()) and int(state.step) == 3 and state.opt_state is None
    assert {x.sharding.mesh for x in jax.tree.leaves(state.params)} == {mesh}
    one = single_device_mesh()
    assert one.size == 1
    _, _, on_one = restore_weights(trained_workdir, step=3, mesh=one)
    assert {len(x.sharding.device_set) for x in jax.tree.leaves(on_one.params)} == {1}
    _, host, step = restore_params(trained_workdir, step=3)
    assert step == 3
    for a, b, c in zip(jax.tree.leaves(host), jax.tree.leaves(state.params),
                       jax.tree.leaves(on_one.params), strict=True):
        assert isinstance(a, np.ndarray)
        np.testing.assert_array_equal(a, np.asarray(b))
        np.testing.assert_array_equal(a, np.asarray(c))


def test_no_module_restores_weights_but_train_checkpoint():
    """Eval, export, the offline passes and init_from share one restore: nothing else
    builds the weights' shapes or calls Checkpointer.restore_weights."""
    import ast

    import contrastive_jax

    root = os.path.dirname(contrastive_jax.__file__)
    callers = set()
    for folder, _, names in os.walk(root):
        for name in names:
            if not name.endswith(".py"):
                continue
            path = os.path.join(folder, name)
            with open(path, encoding="utf-8") as f:
                tree = ast.parse(f.read())
            for node in ast.walk(tree):
                if isinstance(node, ast.Call):
                    func = node.func
                    called = func.attr if isinstance(func, ast.Attribute) else getattr(
                        func, "id", None)
                    if called == "weights_state_shapes" or (
                            called == "restore_weights" and isinstance(func, ast.Attribute)):
                        callers.add(os.path.relpath(path, root))
    assert callers == {os.path.join("checkpoints", "store.py")}, callers


def test_unknown_export_format_is_one_line_before_any_restore(trained_workdir, tmp_path,
                                                              capsys):
    assert FORMATS.names() == ("npz", "safetensors", "hf", "open_clip")
    out = str(tmp_path / "x")
    argv = ["export", "--model", trained_workdir, "--format", "onnx", "--out", out]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err == "error: unknown export format 'onnx'; known: npz, safetensors, hf, open_clip\n"
    assert not os.path.exists(out)
    assert cli.main(["export", "--model", str(tmp_path), "--format", "npz",
                     "--out", out]) == 2
    err = capsys.readouterr().err  # --model takes any model SPEC
    assert err.count("\n") == 1 and "is neither a training workdir, an export directory" in err


@pytest.mark.parametrize("fmt", ["npz", "safetensors"])
def test_export_round_trip_gives_same_params_and_zeroshot(trained_workdir, tmp_path, fmt):
    out = export_checkpoint(trained_workdir, fmt, str(tmp_path / fmt))
    card, params, tokenizer = load_exported(out)
    _, ckpt, step = restore_params(trained_workdir)
    assert card["step"] == step == 6 and card["loss"] == "sigmoid_chunked"
    assert card["model"]["text"]["max_len"] == 8 and card["image"]["value_range"] == [-1, 1]
    assert np.isclose(card["t"], np.exp(ckpt["t_log"])) and np.isclose(card["b"], ckpt["b"])
    want, have = flatten(ckpt), flatten(params)
    assert sorted(want) == sorted(have) and "img/encoder/blocks/0/attn/query/kernel" in have
    for name in want:
        assert have[name].shape == want[name].shape, name
        np.testing.assert_array_equal(have[name], want[name])
    assert tokenizer.encode_batch(["a shirt"], 8)[0, 0] != 0

    from_ckpt = evaluate_model(trained_workdir)
    from_export = evaluate_model(out)
    assert from_export == from_ckpt
    assert 0 <= from_export["zeroshot/fashion_mnist/top1"] <= 1


def test_export_refuses_existing_dir_and_bad_files(trained_workdir, tmp_path, capsys):
    out = str(tmp_path / "e")
    os.makedirs(out)
    argv = ["export", "--model", trained_workdir, "--format", "npz", "--out", out]
    assert cli.main(argv) == 2
    assert "already exists; pass --overwrite" in capsys.readouterr().err
    assert os.listdir(out) == []
    assert cli.main(argv + ["--overwrite"]) == 0
    assert cli.main(argv + ["--overwrite", "--step", "4"]) == 2
    assert "no checkpoint for step 4" in capsys.readouterr().err

    weights = os.path.join(out, "params.npz")
    with open(weights, "rb") as f:
        data = f.read()
    with open(weights, "wb") as f:
        f.write(data[: len(data) // 2])
    assert cli.main(["eval", "--model", out]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: cannot read") and err.count("\n") == 1

    os.remove(weights)
    assert cli.main(["eval", "--model", out]) == 2
    assert "missing weights file" in capsys.readouterr().err
    assert cli.main(["eval", "--model", str(tmp_path)]) == 2
    assert "is neither a training workdir, an export directory" in capsys.readouterr().err


def test_export_of_another_architecture_is_refused(trained_workdir, tmp_path):
    out = export_checkpoint(trained_workdir, "safetensors", str(tmp_path / "s"))
    import json

    path = os.path.join(out, "export_config.json")
    with open(path) as f:
        card = json.load(f)
    card["model"]["text"]["width"] = 48
    with open(path, "w") as f:
        json.dump(card, f)
    with pytest.raises(ValueError, match="do not fit the model config: .*shape"):
        load_exported(out)
