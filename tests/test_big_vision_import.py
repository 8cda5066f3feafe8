"""big_vision two_towers .npz import: names, layouts, derived config, same embeddings."""

import jax
import numpy as np
import pytest
from helpers import fashion_tasks, synthetic_batches

from contrastive_jax.export.big_vision import load_big_vision
from contrastive_jax.models import complete_config
from contrastive_jax.models.state import ModelDef

MODEL = {
    "embed_dim": 24, "bias_init": -5.0, "temperature_init": 7.0,
    "image": {"variant": None, "width": 32, "depth": 2, "mlp_dim": 48, "num_heads": 2,
              "patch_size": 7, "image_size": 28, "channels": 1, "pool": "map", "head": True},
    "text": {"variant": None, "width": 16, "depth": 1, "mlp_dim": 32, "num_heads": 2,
             "vocab_size": 64, "max_len": 8, "pool": "final", "head": True},
}
BLOCK = {"ln1": "LayerNorm_0", "ln2": "LayerNorm_1", "attn": "MultiHeadDotProductAttention_0",
         "mlp": "MlpBlock_0"}


def big_vision_npz(params, path, scan=False):
    """Writes `params` in big_vision's naming, spelled out name by name."""
    out = {"params/t": np.reshape(params["t_log"], (1,)), "params/b": np.reshape(params["b"], (1,))}

    def put(name, value):
        out[f"params/{name}"] = np.asarray(value)

    def block(prefix, p):
        for ours, theirs in BLOCK.items():
            for sub, leaves in p[ours].items():
                if ours == "mlp":
                    for leaf, v in leaves.items():
                        put(f"{prefix}/{theirs}/Dense_{int(sub[-1]) - 1}/{leaf}", v)
                elif isinstance(leaves, dict):
                    for leaf, v in leaves.items():
                        put(f"{prefix}/{theirs}/{sub}/{leaf}", v)
                else:
                    put(f"{prefix}/{theirs}/{sub}", leaves)

    for tower, enc in (("img", "Transformer"), ("txt", "Encoder_0")):
        p = params[tower]
        blocks = p["encoder"]["blocks"]
        for i in sorted(blocks):
            block(f"{tower}/{enc}/encoderblock_{i}", blocks[i])
        for leaf, v in p["encoder"]["encoder_norm"].items():
            put(f"{tower}/{enc}/encoder_norm/{leaf}", v)
        put(f"{tower}/pos_embedding", p["pos_embedding"])
        for leaf, v in params[f"{tower}_head"].items():
            put(f"{tower}/head/{leaf}", v)
    for leaf, v in params["img"]["embedding"].items():
        put(f"img/embedding/{leaf}", v)
    put("txt/Embed_0/embedding", params["txt"]["embedding"]["embedding"])
    head = params["img"]["map_head"]
    put("img/MAPHead_0/probe", head["probe"])
    for sub, leaves in head["attn"].items():
        for leaf, v in leaves.items():
            put(f"img/MAPHead_0/MultiHeadDotProductAttention_0/{sub}/{leaf}", v)
    for leaf, v in head["ln"].items():
        put(f"img/MAPHead_0/LayerNorm_0/{leaf}", v)
    for fc, dense in (("fc1", "Dense_0"), ("fc2", "Dense_1")):
        for leaf, v in head["mlp"][fc].items():
            put(f"img/MAPHead_0/MlpBlock_0/{dense}/{leaf}", v)
    if scan:  # big_vision scan=True: one `encoderblock` with a leading depth axis
        prefix = "params/img/Transformer/encoderblock_"
        names = sorted({k.split("/", 4)[4] for k in out if k.startswith(prefix)})
        for name in names:
            out[f"params/img/Transformer/encoderblock/{name}"] = np.stack(
                [out.pop(f"{prefix}{i}/{name}") for i in range(2)])
    np.savez(path, **out)
    return out


@pytest.mark.parametrize("scan", [False, True])
def test_big_vision_checkpoint_gives_our_embeddings(tmp_path, scan):
    config = complete_config(MODEL)
    params = jax.tree.map(np.asarray, ModelDef.init(config, jax.random.key(2))[0])
    written = big_vision_npz(params, str(tmp_path / "bv.npz"), scan=scan)
    # Hand-checked layouts: big_vision shapes as flax linen stores them.
    key = "params/img/MAPHead_0/MultiHeadDotProductAttention_0/out/kernel"
    assert written[key].shape == (2, 16, 32)  # [heads, head_dim, width]
    assert written["params/img/embedding/kernel"].shape == (7, 7, 1, 32)  # [p, p, C, width]
    assert written["params/txt/Embed_0/embedding"].shape == (64, 16)
    assert written["params/t"].shape == (1,)
    np.testing.assert_allclose(np.exp(written["params/t"]), 7.0, rtol=1e-6)

    model, loaded = load_big_vision(str(tmp_path / "bv.npz"))
    assert model["image"] | {"variant": None} == {**MODEL["image"], "posemb": "learn"}
    assert model["text"] == MODEL["text"]
    assert model["embed_dim"] == 24 and model["bias_init"] == pytest.approx(-5.0)
    batch = synthetic_batches(1, 6, vocab=64, max_len=8)[0]
    ours = ModelDef(config).bind(params)(batch["image"], batch["text"])
    theirs = ModelDef(complete_config(model)).bind(loaded)(batch["image"], batch["text"])
    for a, b in zip(ours, theirs, strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_bad_big_vision_files_are_one_line_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        load_big_vision(str(tmp_path / "missing.npz"))
    np.savez(tmp_path / "other.npz", **{"params/encoder/kernel": np.zeros((2, 2))})
    with pytest.raises(ValueError, match="not a big_vision two_towers parameter"):
        load_big_vision(str(tmp_path / "other.npz"))
    (tmp_path / "trunc.npz").write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(ValueError, match="cannot read"):
        load_big_vision(str(tmp_path / "trunc.npz"))


def test_cli_evaluates_a_big_vision_checkpoint(fake_data_dir, tmp_path, capsys):
    import json

    from contrastive_jax import cli
    from contrastive_jax.config import default_config
    from contrastive_jax.data.tokenizer import train_tokenizer
    from contrastive_jax.data.tokenizer_setup import training_captions

    config = complete_config(MODEL)
    params = jax.tree.map(np.asarray, ModelDef.init(config, jax.random.key(2))[0])
    path = str(tmp_path / "bv.npz")
    big_vision_npz(params, path)
    data = default_config().data
    data.data_dir = fake_data_dir
    tokenizer = train_tokenizer(training_captions(data), str(tmp_path / "tok"), vocab_size=64)
    base = ["eval", "--model", f"big_vision:{path}"]
    assert cli.main(base) == 2  # an import carries no tasks
    assert "has no eval tasks: give a suite with --config" in capsys.readouterr().err
    base += ["--config", "configs/demo_siglip.py"]
    assert cli.main(base) == 2
    assert "needs --tokenizer (the checkpoint's sentencepiece model)" in capsys.readouterr().err
    argv = base + ["--tokenizer", tokenizer,
                   f"--config.data.data_dir={fake_data_dir}",
                   f"--config.evals.tasks={fashion_tasks()!r}"]
    assert cli.main(argv) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert 0 <= result["zeroshot/fashion_mnist/top1"] <= 1
