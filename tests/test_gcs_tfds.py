"""A TFDS `data_dir` on gs:// against a real GCS API on loopback (fake-gcs-server): TFDS
reads the builder's metadata through etils.epath (gcsfs), and the project's reader reads its
TFRecord files (TensorFlow's own GCS client cannot be pointed at the emulator, so a read
through it fails here: docs/multihost.md). The train stream and an eval split read from the
bucket equal those read from the same files on disk."""

import itertools

import numpy as np
from test_data_sources import tokenizer

from contrastive_jax import paths
from contrastive_jax.data import schema, stream, tfds_files
from contrastive_jax.datasets.catalogue import get_builder, read_split

__all__ = ["tokenizer"]  # a fixture used here


def _train_batches(data_dir: str, tok, n: int = 3) -> list[dict[str, np.ndarray]]:
    cfg = schema.default_data_config()
    cfg.data_dir, cfg.shuffle_buffer, cfg.max_len = data_dir, 32, 8
    cfg.flip, cfg.logical_streams = True, 2  # the split in two even parts, augmented
    ds = stream.train_dataset(cfg, tok, global_batch_size=8, seed=3)
    return list(itertools.islice(ds.as_numpy_iterator(), n))


def test_a_tfds_data_dir_on_gcs_reads_as_the_local_one(gcs, fake_data_dir, tokenizer):
    remote = "gs://cj-test/tfds"
    paths.copytree(fake_data_dir, remote)
    builder = get_builder("fashion_mnist_captions", remote)
    assert str(builder.data_dir).startswith(remote) and builder.is_prepared()
    assert tfds_files.on_object_store(builder)

    local, ours = _train_batches(fake_data_dir, tokenizer), _train_batches(remote, tokenizer)
    for a, b in zip(local, ours, strict=True):
        for key in ("image", "text", "label", "stream_position"):
            np.testing.assert_array_equal(b[key], a[key], err_msg=key)

    # An eval split (zero-shot, few-shot, retrieval data): TFDS's own reader on disk.
    want = list(read_split(get_builder("fashion_mnist_captions", fake_data_dir), "test")
                .as_numpy_iterator())
    got = list(tfds_files.read_split(builder, "test").as_numpy_iterator())
    assert len(got) == len(want) == 50
    for a, b in zip(want, got, strict=True):
        assert a.keys() == b.keys()
        for key in a:
            np.testing.assert_array_equal(b[key], a[key], err_msg=key)
