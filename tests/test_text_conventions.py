"""Text conventions per model: big_vision's EOS rules and padding, lowercasing, the config
keys, the checkpoint signature, the export card, and a big_vision tower whose pad id matters."""

import numpy as np
import pytest
import tensorflow as tf
from helpers import tiny_config

from contrastive_jax.config import apply_override, validate
from contrastive_jax.data import preprocess
from contrastive_jax.data.text_conventions import TextConventions, for_model
from contrastive_jax.data.tokenizer import Tokenizer, train_tokenizer
from contrastive_jax.errors import ConfigError

TEXTS = ["a cat", "a dog", "a bag", "the cat sat on a mat", "Cat", "DOG", "BAG", "Äpfel"] * 20


@pytest.fixture(scope="module")
def sp_model(tmp_path_factory):
    # No case folding in the model itself, so only the conventions' lowercasing acts.
    prefix = str(tmp_path_factory.mktemp("tok") / "spm")
    return train_tokenizer(TEXTS, prefix, vocab_size=40, lowercase=False)


# big_vision/pp/ops_text.py, get_pp_tokenize's docstring (max_len=3, id("</s>")=1,
# id("a")=2), plus a too-long and an empty text worked through `tokenize`'s code by hand.
BIG_VISION_CASES = {
    # (eos, pad_id): rows for ids [2], [2, 2], [2, 2, 2], [5, 6, 7, 8, 9], []
    ("none", 0): [[2, 0, 0], [2, 2, 0], [2, 2, 2], [5, 6, 7], [0, 0, 0]],
    ("yes", 0): [[2, 1, 0], [2, 2, 1], [2, 2, 2], [5, 6, 7], [1, 0, 0]],
    ("sticky", 0): [[2, 1, 0], [2, 2, 1], [2, 2, 1], [5, 6, 1], [1, 0, 0]],
    ("sticky", 1): [[2, 1, 1], [2, 2, 1], [2, 2, 1], [5, 6, 1], [1, 1, 1]],
}


@pytest.mark.parametrize(("eos", "pad_id"), list(BIG_VISION_CASES))
def test_eos_modes_and_padding_mirror_big_vision(eos, pad_id):
    ids = [[2], [2, 2], [2, 2, 2], [5, 6, 7, 8, 9], []]
    got = TextConventions(pad_id=pad_id, eos=eos).pack(ids, 3)
    assert got.dtype == np.int32
    np.testing.assert_array_equal(got, BIG_VISION_CASES[eos, pad_id])
    # max_len 1: sticky keeps only the EOS (tokens[:0] + tokens[-1:]), "yes" the first id.
    one = {"none": 5, "yes": 5, "sticky": 1}[eos]
    assert TextConventions(pad_id=pad_id, eos=eos).pack([[5, 6]], 1).tolist() == [[one]]


def test_tokenizer_applies_its_conventions(sp_model):
    texts = ["a cat", "the cat sat on a mat the cat sat on a mat", ""]
    sp = Tokenizer(sp_model)._sp
    ids = sp.encode(texts, out_type=int)
    # Today's default: ids[:max_len - 1] + EOS, padded with 0.
    old = np.zeros((3, 6), np.int32)
    for row, seq in zip(old, ids, strict=True):
        seq = seq[:5] + [1]
        row[: len(seq)] = seq
    np.testing.assert_array_equal(Tokenizer(sp_model).encode_batch(texts, 6), old)
    conventions = TextConventions(pad_id=1, eos="yes", max_len=6)
    tok = Tokenizer(sp_model, conventions)
    np.testing.assert_array_equal(tok.encode_batch(texts), conventions.pack(ids))
    # The tf.data path goes through the same conventions.
    np.testing.assert_array_equal(tok.tf_tokenize(tf.constant(texts)).numpy(),
                                  conventions.pack(ids))
    assert tok.encode_batch(texts, 4).shape == (3, 4)  # an explicit max_len wins
    with pytest.raises(ConfigError, match="data.pad_id"):
        Tokenizer(sp_model, TextConventions(pad_id=1000))


def test_ascii_and_unicode_lowercasing(sp_model):
    assert TextConventions(lowercase="ascii").lower("ÄB") == "Äb"
    assert TextConventions(lowercase="unicode").lower("ÄB") == "äb"
    assert TextConventions().lower("ÄB") == "ÄB"
    sp = Tokenizer(sp_model)._sp
    for mode, lowered in (("ascii", "Äb"), ("unicode", "äb"), ("none", "ÄB")):
        tok = Tokenizer(sp_model, TextConventions(lowercase=mode, max_len=8))
        want = TextConventions(max_len=8).pack([sp.encode(lowered)])
        np.testing.assert_array_equal(tok.encode_batch(["ÄB"]), want)
    # Training lowercases in tf.data (clean_captions); eval texts in Python: the same.
    texts = ["ÄB", "İstanbul", "ΣΑΣ ΟΔΟΣ", " Mixed Case "]
    for flag, mode in ((True, "unicode"), ("unicode", "unicode"), ("ascii", "ascii")):
        cleaned = preprocess.clean_captions(tf.constant(texts), flag).numpy()
        c = TextConventions(lowercase=mode)
        assert [s.decode() for s in cleaned] == [c.lower(t.strip()) for t in texts]


def test_config_keys_and_their_validation():
    config = tiny_config()
    assert (config.data.pad_id, config.data.eos, config.data.lowercase) == (0, "sticky", True)
    assert for_model(config) == TextConventions(0, "sticky", "unicode", 8)
    apply_override(config, "data.lowercase", "ascii")
    assert for_model(config).lowercase == "ascii"
    apply_override(config, "data.lowercase", "False")
    assert config.data.lowercase is False and for_model(config).lowercase == "none"
    for key, value in (("data.lowercase", "upper"), ("data.lowercase", "none"),
                       ("data.eos", "maybe"), ("data.pad_id", "-1")):
        bad = tiny_config()
        apply_override(bad, key, value)
        with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
            validate(bad)
    # A pad id other than 0 only with a pool that does not mask id 0 as padding.
    masked = tiny_config(data={"pad_id": 1})
    with pytest.raises(ConfigError, match=r"data\.pad_id.*model\.text\.pool"):
        validate(masked)
    final = tiny_config(data={"pad_id": 1}, model={"text": {"pool": "final"}})
    validate(final)
    assert for_model(final).pad_id == 1


def test_checkpoint_signature_records_conventions():
    from contrastive_jax.checkpoints.store import (
        _default_signature,
        _diff_keys,
        _fill_defaults,
        _model_signature,
    )

    config = tiny_config()
    ours = _model_signature(config)
    assert ours["text_conventions"] == TextConventions(0, "sticky", "unicode", 8).to_dict()
    old = {k: v for k, v in ours.items() if k != "text_conventions"}  # before they existed
    assert _fill_defaults(old, _default_signature("two_tower", ours)) == ours
    # A pad id change is a model change, for old checkpoints too.
    bv = tiny_config(data={"pad_id": 1}, model={"text": {"pool": "final"}})
    theirs, other = _model_signature(bv), _model_signature(tiny_config(
        model={"text": {"pool": "final"}}))
    assert _diff_keys(theirs, other) == ["model.text_conventions.pad_id"]
    filled = _fill_defaults({k: v for k, v in theirs.items() if k != "text_conventions"},
                            _default_signature("two_tower", theirs))
    assert _diff_keys(filled, theirs) == ["model.text_conventions.pad_id"]


def test_export_card_round_trip(sp_model, tmp_path):
    import jax

    from contrastive_jax.export.native import card_conventions, export_weights, load_exported
    from contrastive_jax.models.state import ModelDef

    config = tiny_config(data={"pad_id": 1, "eos": "yes", "lowercase": "ascii"},
                         model={"text": {"pool": "final", "vocab_size": 64}})
    validate(config)
    params = jax.tree.map(np.asarray, ModelDef.init(config.model, jax.random.key(0))[0])
    out = export_weights("npz", config, params, 3, sp_model, str(tmp_path / "export"))
    card, _, tok = load_exported(out)
    want = TextConventions(pad_id=1, eos="yes", lowercase="ascii", max_len=8)
    assert card["text"]["pad_id"] == 1 and card["text"]["eos"] == "yes"
    assert card_conventions(card) == want and tok.conventions == want
    assert tok.encode_batch(["A"])[0, -1] == 1
    # A card written before conventions were recorded: pad 0, sticky EOS.
    old = {"text": {"max_len": 8, "lowercase": True, "tokenizer": "tokenizer.model",
                    "pad_id": 0, "eos_id": 1, "layout": "ids then EOS, right-padded with 0"}}
    assert card_conventions(old) == TextConventions(0, "sticky", "unicode", 8)


def test_workdir_tokenizer_carries_the_runs_conventions(sp_model, tmp_path):
    import shutil

    from contrastive_jax.data.tokenizer_setup import workdir_tokenizer

    shutil.copyfile(sp_model, tmp_path / "tokenizer.model")
    config = tiny_config(data={"pad_id": 1, "lowercase": "ascii"},
                         model={"text": {"pool": "final"}})
    assert workdir_tokenizer(config, str(tmp_path)).conventions == for_model(config)
    # An old workdir's config.json has no pad_id / eos: today's conventions.
    assert workdir_tokenizer(tiny_config(), str(tmp_path)).conventions == TextConventions(
        0, "sticky", "unicode", 8)


def test_big_vision_eval_pads_with_one_and_the_pad_id_matters(sp_model, tmp_path, monkeypatch):
    import jax
    from test_big_vision_import import MODEL, big_vision_npz

    from contrastive_jax.evaluate import embed
    from contrastive_jax.evaluate.zeroshot import class_embeddings
    from contrastive_jax.export.model_spec import load_model
    from contrastive_jax.models import complete_config
    from contrastive_jax.models.state import ModelDef

    params = jax.tree.map(np.asarray, ModelDef.init(complete_config(MODEL),
                                                    jax.random.key(2))[0])
    npz = str(tmp_path / "bv.npz")
    big_vision_npz(params, npz)
    seen = []  # the token rows that reach encode_text
    real_embed = embed._embed

    def spy(method, model_def, state, rows, mesh):
        if method == "encode_text":
            seen.append(np.asarray(rows))
        return real_embed(method, model_def, state, rows, mesh)

    monkeypatch.setattr(embed, "_embed", spy)
    classes, templates = ["Cat", "DOG", "bag"], ["{}", "{}."]

    def zeroshot_text(overrides):
        seen.clear()
        model = load_model(f"big_vision:{npz}", tokenizer=sp_model,
                           config="configs/demo_siglip.py", overrides=overrides)
        config, model_def, state, tok, mesh = (model.config, model.model_def, model.state,
                                               model.text_encoder, model.mesh)
        emb = class_embeddings(model_def, state, tok, classes, templates,
                               config.data.max_len, mesh)
        return config, tok, np.concatenate(seen), emb

    config, tok, tokens, emb1 = zeroshot_text([])
    assert tok.conventions == TextConventions(1, "sticky", "ascii", 8)
    assert config.data.max_len == 8 and config.model.text.pool == "final"
    assert tokens.shape == (6, 8), tokens
    assert (tokens[:, -3:] == 1).all()  # ..., 1, 1, 1: EOS then pads of 1
    sp = tok._sp
    prompts = [t.format(c).lower() for c in classes for t in templates]
    np.testing.assert_array_equal(tokens, TextConventions(1, max_len=8).pack(
        sp.encode(prompts)))
    _, tok0, tokens0, emb0 = zeroshot_text(["data.pad_id=0"])  # an override wins
    assert tok0.conventions.pad_id == 0 and (tokens0[:, -2:] == 0).all()
    np.testing.assert_array_equal(tokens0, TextConventions(0, max_len=8).pack(
        sp.encode(prompts)))
    np.testing.assert_array_equal(np.where(tokens0 == 0, 1, tokens0), tokens)
    # No pad mask, final-position pooling: the pad id changes every text embedding.
    assert (np.abs(emb1 - emb0).max(axis=1) > 1e-3).all()
