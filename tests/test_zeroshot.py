"""Zero-shot accuracy: sharded over the mesh, every test example counted exactly once."""

import jax
import numpy as np
from helpers import tiny_config

from contrastive_jax.data.labelled import split_of
from contrastive_jax.data.tokenizer import Tokenizer, train_tokenizer
from contrastive_jax.data.tokenizer_setup import training_captions
from contrastive_jax.datasets import fashion_mnist_captions as fmc
from contrastive_jax.datasets.catalogue import class_names
from contrastive_jax.evaluate import embedding_stats
from contrastive_jax.evaluate.embed import encode_images
from contrastive_jax.evaluate.zeroshot import class_embeddings, zeroshot_accuracy
from contrastive_jax.models.state import ModelDef
from contrastive_jax.parallel.mesh import create_mesh
from contrastive_jax.train.init_state import create_train_state
from contrastive_jax.train.optimizer import create_optimizer


def test_zeroshot_matches_a_direct_computation_on_any_mesh(fake_data_dir, tmp_path):
    config = tiny_config(data={"data_dir": fake_data_dir})
    tokenizer = Tokenizer(train_tokenizer(training_captions(config.data), str(tmp_path / "t"),
                                          vocab_size=64))
    names = class_names(config.data.dataset, fake_data_dir)
    templates = fmc.ZEROSHOT_TEMPLATES[:3]
    results = []
    for devices, batch_size in ((1, 24), (8, 16)):  # 50 test images: both pad the last batch
        mesh = create_mesh(config.mesh, devices=jax.devices()[:devices])
        tx, _ = create_optimizer(config.optimizer, 10)
        state, _ = create_train_state(config, tx, mesh)
        model_def = ModelDef(config.model)
        classifier = class_embeddings(model_def, state, tokenizer, names, templates,
                                      config.data.max_len, mesh)
        batches = split_of(config.data, "test").batches(batch_size)
        results.append(zeroshot_accuracy(model_def, state, classifier, batches, mesh))
        # Direct: embed every test image once, take the arg-max class.
        images, labels = [], []
        for b in split_of(config.data, "test").batches(50):
            images.append(b["image"][b["mask"] > 0])
            labels.append(b["label"][b["mask"] > 0])
        images, labels = np.concatenate(images), np.concatenate(labels)
        logits = encode_images(model_def, state, images, mesh) @ classifier.T
        order = np.argsort(-logits, axis=-1)
        assert results[-1]["count"] == len(labels) == 50
        np.testing.assert_allclose(results[-1]["top1"], np.mean(order[:, 0] == labels))
        np.testing.assert_allclose(results[-1]["top5"],
                                   np.mean((order[:, :5] == labels[:, None]).any(-1)))
        # Confusion [true, predicted] and per-class top-1: padded rows never counted.
        confusion = np.zeros((10, 10), np.int64)
        np.add.at(confusion, (labels, order[:, 0]), 1)
        np.testing.assert_array_equal(results[-1]["confusion"], confusion)
        np.testing.assert_allclose(results[-1]["per_class"],
                                   np.diag(confusion) / np.maximum(confusion.sum(1), 1))
    assert results[0]["top1"] == results[1]["top1"]
    np.testing.assert_allclose(classifier, classifier / np.linalg.norm(classifier, axis=-1,
                                                                        keepdims=True),
                               rtol=1e-6)  # float32 rounding of a unit norm


def test_alignment_and_uniformity_formulas():
    rng = np.random.default_rng(0)
    z = rng.normal(size=(64, 8))
    z /= np.linalg.norm(z, axis=-1, keepdims=True)
    assert embedding_stats.alignment(z, z) == 0.0
    assert np.isclose(embedding_stats.alignment(z, -z), 4.0)  # ||2z||^2
    # Direct transcription of log E_{i != j} exp(-2 ||zi - zj||^2).
    d = ((z[:, None] - z[None]) ** 2).sum(-1)
    direct = np.log(np.exp(-2 * d)[~np.eye(64, dtype=bool)].mean())
    assert np.isclose(embedding_stats.uniformity(z), direct)
    collapsed = np.repeat(z[:1], 64, axis=0)
    assert np.isclose(embedding_stats.uniformity(collapsed), 0.0)  # the worst value
