"""CatLIP: WordNet from Debian's files, nouns by spaCy's tagger on unambiguous captions, the
synset vocabulary (counts, threshold, hash), the labeller against the tagger, zero-shot
rows, the loss against a written-out BCE, a sharded step, and one-line errors."""

import json

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from helpers import FASHION_TEST, fashion_tasks, synthetic_batches, tiny_catlip_config
from test_train_step import assert_eight_devices_match_one

from contrastive_jax.config import validate
from contrastive_jax.data import wordnet
from contrastive_jax.data.nouns import NounSynsets, wordnet_synset
from contrastive_jax.data.synsets import (
    SynsetLabeller,
    SynsetVocabulary,
    build_vocabulary,
    check_hash,
)
from contrastive_jax.errors import ConfigError, DataError
from contrastive_jax.losses.synset_bce import multi_hot, synset_bce
from contrastive_jax.models import create_model


@pytest.fixture(scope="module")
def nouns():
    return NounSynsets()


# Each caption's nouns are unambiguous; adjectives, verbs, determiners and prepositions
# name nothing, and a compound WordNet lists is one concept.
HAND_LABELLED = [
    ("a photo of a dog.", [("photo", "photograph.n.01"), ("dog", "dog.n.01")]),
    ("a black and white picture of a dress.",
     [("picture", "picture.n.01"), ("dress", "dress.n.01")]),
    ("two cats sleep on a red sofa.", [("cats", "cat.n.01"), ("sofa", "sofa.n.01")]),
    ("a man rides a bicycle in the park.",
     [("man", "man.n.01"), ("bicycle", "bicycle.n.01"), ("park", "park.n.01")]),
    ("a tee shirt and a running shoe.",
     [("tee shirt", "jersey.n.03"), ("running shoe", "running_shoe.n.01")]),
    ("my t-shirt.", [("t-shirt", "jersey.n.03")]),
    ("it is very quickly.", []),
]


@pytest.mark.parametrize("caption, expected", HAND_LABELLED)
def test_nouns_agree_with_hand_labels(nouns, caption, expected):
    assert next(nouns.extract([caption])) == expected


def test_wordnet_is_debians_3_0_and_synonyms_share_a_synset():
    wn = wordnet.load_wordnet()
    assert wn.get_version() == "3.0"
    assert wordnet_synset(["sneakers"]) == wordnet_synset(["sneaker"]) == "gym_shoe.n.01"
    assert wordnet_synset(["tee", "shirt"]) == wordnet_synset(["t-shirt"]) == "jersey.n.03"
    assert wordnet_synset(["quickly"]) is None
    # The lexnames table written for NLTK names the files the data refers to.
    assert wn.synset("dog.n.01").lexname() == "noun.animal"


def test_a_missing_wordnet_is_one_line_with_the_install(tmp_path):
    with pytest.raises(DataError, match="apt-get install wordnet-base") as e:
        wordnet.load_wordnet(str(tmp_path))
    assert "\n" not in str(e.value)


CORPUS = (["a photo of a dog."] * 3 + ["a dog on a sofa."] * 2 + ["a cat."]
          + ["quickly!", b"\xff\xfe"])


def test_vocabulary_counts_captions_and_keeps_the_frequent(nouns, tmp_path):
    vocab = build_vocabulary(CORPUS, nouns, min_count=2)
    assert vocab.synsets == ("dog.n.01", "photograph.n.01", "sofa.n.01")
    assert vocab.counts == (5, 3, 2)  # cat.n.01 (1 caption) is under the threshold
    assert vocab.forms == {"dog": "dog.n.01", "photo": "photograph.n.01",
                           "sofa": "sofa.n.01"}
    assert vocab.summary["undecodable"] == 1 and vocab.summary["without_nouns"] == 1
    assert build_vocabulary(CORPUS, nouns, min_count=1, max_size=2).synsets == vocab.synsets[:2]
    path = str(tmp_path / "synsets.json")
    vocab.save(path)
    assert SynsetVocabulary.load(path) == vocab
    # The hash is the ordered synsets': what the head's rows mean.
    other = SynsetVocabulary(vocab.synsets[::-1], vocab.counts[::-1], vocab.forms)
    assert other.hash != vocab.hash
    check_hash(vocab, vocab.hash, path)
    with pytest.raises(ConfigError, match="'data.synsets.hash'"):
        check_hash(vocab, other.hash, path)
    data = json.load(open(path))
    data["synsets"][0]["name"] = "cat.n.01"  # edited by hand: its hash no longer fits
    json.dump(data, open(path, "w"))
    with pytest.raises(DataError, match="does not match its own hash"):
        SynsetVocabulary.load(path)
    with pytest.raises(DataError, match="not found"):
        SynsetVocabulary.load(str(tmp_path / "none.json"))


def test_the_labeller_reads_captions_as_the_tagger_did(nouns):
    import tensorflow as tf

    from contrastive_jax.datasets.fashion_mnist_captions import SYNONYMS, TRAIN_TEMPLATES

    captions = [t.format(s) for t in TRAIN_TEMPLATES for names in SYNONYMS.values()
                for s in names]
    vocab = build_vocabulary(captions, nouns, min_count=1)
    labeller = SynsetLabeller(vocab)
    index = {name: i for i, name in enumerate(vocab.synsets)}
    differ = []
    for caption, found in zip(captions, nouns.extract(captions), strict=True):
        tagged = list(dict.fromkeys(index[name] for _, name in found))
        labels = labeller.labels(caption)
        # The table knows every form the tagger took as a noun anywhere, so it also labels
        # the few where the tagger, in context, did not ("dress on a dark background.":
        # "dress" read as a verb); it never labels less.
        assert set(tagged) <= set(labels), caption
        differ += [caption] if labels != tagged else []
    assert len(differ) <= 0.02 * len(captions), differ
    ids = labeller.encode_batch(captions, 4)
    np.testing.assert_array_equal(labeller.tf_tokenize(tf.constant(captions), 4).numpy(), ids)
    first = labeller.labels(captions[0])
    assert list(ids[0][: len(first)]) == [i + 1 for i in first] and ids.max() <= len(index)


def test_zero_shot_rows_read_each_class_names_synsets():
    vocab = SynsetVocabulary(("boot.n.01", "ankle.n.01", "gym_shoe.n.01"), (3, 2, 1),
                             {"boot": "boot.n.01", "ankle": "ankle.n.01"})
    labeller = SynsetLabeller(vocab)
    rows = labeller.class_rows(["Ankle boot", "Sneakers", "Tent"], wordnet_synset)
    np.testing.assert_allclose(rows, [[0.5, 0.5, 0], [0, 0, 1], [0, 0, 0]])
    model = create_model(tiny_catlip_config(num_synsets=3).model, rngs=nnx.Rngs(0))
    images = jnp.asarray(np.random.default_rng(0).normal(size=(4, 28, 28, 1)), jnp.float32)
    scores = model.class_scores(images, jnp.asarray(rows))
    logits = model.synset_logits(images)
    np.testing.assert_allclose(scores[:, 0], logits[:, :2].mean(-1), rtol=1e-6)
    np.testing.assert_allclose(scores[:, 1], logits[:, 2], rtol=1e-6)
    assert np.all(np.isneginf(scores[:, 2]))  # no synset in the vocabulary: never chosen


def test_loss_is_binary_cross_entropy_summed_over_synsets():
    rng = np.random.default_rng(0)
    ids = jnp.array([[2, 0, 0], [1, 3, 1], [0, 0, 0]], jnp.int32)  # 1-based, 0 = none
    targets = multi_hot(ids, 4)
    np.testing.assert_array_equal(targets, [[0, 1, 0, 0], [1, 0, 1, 0], [0, 0, 0, 0]])
    logits = rng.normal(size=(3, 4)).astype(np.float32)
    p = 1 / (1 + np.exp(-logits.astype(np.float64)))
    t = np.asarray(targets, np.float64)
    reference = -(t * np.log(p) + (1 - t) * np.log(1 - p)).sum(axis=1).mean()
    loss, aux = synset_bce(jnp.asarray(logits), targets)
    np.testing.assert_allclose(float(loss), reference, rtol=1e-6)
    assert float(aux["synsets_per_example"]) == 1.0
    np.testing.assert_allclose(float(aux["unlabelled_share"]), 1 / 3)


def _synset_batches(num, batch_size, num_synsets):
    rng = np.random.default_rng(1)
    batches = synthetic_batches(num, batch_size)
    for batch in batches:  # 0-3 synsets per example, as the labeller writes them
        ids = rng.integers(1, num_synsets + 1, size=batch["text"].shape).astype(np.int32)
        ids[:, 3:] = 0
        ids[rng.random(ids.shape) < 0.3] = 0
        batch["text"] = ids
    return batches


def test_sharded_catlip_steps_equal_one_device():
    hist1 = assert_eight_devices_match_one(tiny_catlip_config(), _synset_batches(5, 16, 12))
    assert hist1[-1]["train/loss"] < hist1[0]["train/loss"] and "train/t" not in hist1[0]


@pytest.mark.parametrize("sections, key", [
    ({"data": {"synsets": {"enabled": False}}}, "data.synsets.enabled"),
    ({"train": {"microbatches": 2}}, "train.microbatches"),
    ({"evals": {"tasks": [{"kind": "embedding_stats", "name": "x", "data": FASHION_TEST}]}},
     "evals retrieval and embedding_stats tasks"),
    ({"data": {"synsets": {"min_count": 0}}}, "data.synsets.min_count"),
    ({"model": {"head": {"num_synsets": 0}}}, "model.head.num_synsets"),
])
def test_senseless_catlip_configs_are_one_line_errors(sections, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        config = tiny_catlip_config(**sections)
        validate(config)
        create_model(config.model, rngs=nnx.Rngs(0))


def test_the_head_must_fit_the_vocabulary():
    from contrastive_jax.train.loop import check_vocab

    labeller = SynsetLabeller(SynsetVocabulary(("dog.n.01",), (1,), {"dog": "dog.n.01"}))
    with pytest.raises(ConfigError, match="'model.head.num_synsets' is 12 .* has 1 synsets"):
        check_vocab(tiny_catlip_config(), labeller)
    check_vocab(tiny_catlip_config(num_synsets=1), labeller)


def test_bench_step_times_catlip():
    from contrastive_jax.bench.train_step import bench_train_step

    row = bench_train_step(tiny_catlip_config(), steps=1)
    assert row["model"] == "catlip" and row["examples_per_sec"] > 0 and row["flops_per_step"] > 0


def test_a_run_builds_its_vocabulary_once_and_the_stream_carries_synset_ids(
        fake_data_dir, tmp_path):
    from contrastive_jax.data.stream import train_dataset
    from contrastive_jax.data.tokenizer_setup import ensure_tokenizer, workdir_tokenizer

    config = tiny_catlip_config(data={"data_dir": fake_data_dir,
                                      "synsets": {"enabled": True, "min_count": 1}})
    labeller = ensure_tokenizer(config.data, str(tmp_path))
    saved = tmp_path / "synsets.json"
    assert saved.exists() and labeller.vocab_size == len(labeller.vocabulary.synsets) > 5
    # A resume (or an eval) reads the workdir's copy, even when the corpus would now give
    # another vocabulary.
    config.data.synsets.min_count = 10**9
    assert ensure_tokenizer(config.data, str(tmp_path)).vocabulary == labeller.vocabulary
    assert workdir_tokenizer(config, str(tmp_path)).vocabulary == labeller.vocabulary
    config.data.synsets.hash = "0123456789abcdef"
    with pytest.raises(ConfigError, match="'data.synsets.hash'"):
        ensure_tokenizer(config.data, str(tmp_path))
    config.data.synsets.hash = labeller.vocabulary.hash
    batch = next(iter(train_dataset(config.data, labeller, global_batch_size=16)))
    ids = batch["text"].numpy()
    assert ids.shape == (16, 8) and ids.dtype == np.int32
    assert 0 <= ids.min() and ids.max() <= labeller.vocab_size and (ids[:, 0] > 0).all()


def test_a_catlip_run_trains_evaluates_and_its_workdir_evaluates_the_same(
        fake_data_dir, tmp_path):
    from contrastive_jax.data.tokenizer_setup import ensure_tokenizer
    from contrastive_jax.evaluate.model_eval import evaluate_model
    from contrastive_jax.train import loop

    config = tiny_catlip_config(
        num_synsets=0,  # set from the vocabulary below
        data={"data_dir": fake_data_dir, "shuffle_buffer": 64,
              "synsets": {"enabled": True, "min_count": 1}},
        train={"steps": 4, "checkpoint_every": 4},
        evals={"tasks": fashion_tasks(batch_size=64, stats=0)})
    workdir = str(tmp_path / "run")  # not there yet: the vocabulary's save makes it
    config.model.head.num_synsets = ensure_tokenizer(config.data, workdir).vocab_size
    final = loop.train(config, workdir)
    assert 0.0 <= final["zeroshot/fashion_mnist/top1"] <= 1.0 and "train/t" not in final
    again = evaluate_model(workdir)
    assert again["zeroshot/fashion_mnist/top1"] == final["zeroshot/fashion_mnist/top1"]


def test_data_synsets_writes_the_vocabulary_of_a_configs_training_data(
        fake_data_dir, tmp_path, capsys):
    from contrastive_jax import cli

    out = tmp_path / "synsets.json"
    assert cli.main(["data", "synsets", "--config", "configs/demo_catlip.py", "--out", str(out),
                     f"--config.data.data_dir={fake_data_dir}",
                     "--config.data.synsets.min_count=1"]) == 0
    printed = json.loads(capsys.readouterr().out.splitlines()[-1])
    vocab = SynsetVocabulary.load(str(out))
    assert printed["size"] == len(vocab.synsets) > 5 and printed["hash"] == vocab.hash
    assert printed["min_count"] == 1 and sum(vocab.counts) >= printed["captions"] > 0
