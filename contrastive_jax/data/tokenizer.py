"""SentencePiece tokenizer: training, batch encoding in numpy, and encoding inside tf.data."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

import numpy as np
import sentencepiece as spm

from contrastive_jax import paths
from contrastive_jax.data.text_conventions import EOS_ID, PAD_ID, UNK_ID, TextConventions
from contrastive_jax.errors import ConfigError, DataError, InputNotFoundError

# TensorFlow loads only when a tf.data graph tokenizes (tf_tokenize): `data tokenizer` and
# the numpy encoders start in a fraction of a second instead of several.
if TYPE_CHECKING:
    import tensorflow as tf

__all__ = ["EOS_ID", "PAD_ID", "UNK_ID", "Tokenizer", "train_tokenizer", "train_tokenizer_cli"]


def train_tokenizer(
    texts: Iterable[str],
    model_prefix: str,
    vocab_size: int = 1000,
    *,
    model_type: str = "unigram",
    lowercase: bool = True,
    num_threads: int = 2,
) -> str:
    """Trains a SentencePiece model on `texts`; returns the path of `{model_prefix}.model`.

    Ids: pad=0, eos=1, unk=2, no bos. `hard_vocab_limit=False` lets a small corpus yield a
    smaller vocabulary instead of failing; `Tokenizer.vocab_size` reports the real size.
    The model is trained into memory and written all-or-nothing through the path layer
    (local or gs://), `.model` last, so a reader never sees a half-written one.
    """
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(texts),
        model_writer=model,
        vocab_size=vocab_size,
        model_type=model_type,
        hard_vocab_limit=False,
        pad_id=PAD_ID,
        eos_id=EOS_ID,
        unk_id=UNK_ID,
        bos_id=-1,
        # nmt_nfkc_cf = NFKC + case folding: the model itself lowercases.
        normalization_rule_name="nmt_nfkc_cf" if lowercase else "nmt_nfkc",
        character_coverage=1.0,
        num_threads=num_threads,
        minloglevel=2,
    )
    proto = model.getvalue()
    sp = spm.SentencePieceProcessor(model_proto=proto)
    vocab = "".join(f"{sp.id_to_piece(i)}\t{sp.get_score(i):g}\n" for i in range(len(sp)))
    paths.write_text(model_prefix + ".vocab", vocab)
    paths.write_bytes(model_prefix + ".model", proto)
    logging.info("Trained tokenizer %s.model", model_prefix)
    return model_prefix + ".model"


def train_tokenizer_cli(input_path: str, out_prefix: str, vocab_size: int) -> str:
    """Trains from a text file with one caption per line (blank lines ignored)."""

    if not paths.isfile(input_path):
        raise InputNotFoundError(f"caption file not found: {input_path}")

    def lines() -> Iterable[str]:
        with paths.open_file(input_path, "r", encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    yield line.rstrip("\n")

    path = train_tokenizer(lines(), out_prefix, vocab_size)
    print(f"wrote {path} (vocab size {Tokenizer(path).vocab_size})")
    return path


class Tokenizer:
    """A loaded SentencePiece model producing fixed-length id arrays by its model's text
    conventions (`conventions`; default: ids + sticky EOS, 0-padded, no lowercasing)."""

    def __init__(self, model_path: str, conventions: TextConventions | None = None):
        self.model_path = model_path
        if not paths.isfile(model_path):
            raise InputNotFoundError(f"sentencepiece model not found: {model_path}")
        self._proto = paths.read_bytes(model_path)
        try:
            self._sp = spm.SentencePieceProcessor(model_proto=self._proto)
        except RuntimeError as e:  # sentencepiece's only error for a proto it cannot parse
            raise DataError(f"{model_path} is not a sentencepiece model: "
                            f"{str(e).strip()}") from e
        if self._sp.pad_id() != PAD_ID or self._sp.eos_id() != EOS_ID:
            raise DataError(
                f"{model_path}: expected pad_id={PAD_ID} and eos_id={EOS_ID}, got "
                f"{self._sp.pad_id()} and {self._sp.eos_id()}"
            )
        self.conventions = conventions or TextConventions()
        if self.conventions.pad_id >= self.vocab_size:
            raise ConfigError(f"config key 'data.pad_id' ({self.conventions.pad_id}) is not an "
                              f"id of {model_path} (vocab size {self.vocab_size})")

    def with_conventions(self, conventions: TextConventions) -> Tokenizer:
        """The same sentencepiece model under other conventions."""
        return Tokenizer(self.model_path, conventions)

    @property
    def vocab_size(self) -> int:
        """Number of ids the text model's embedding table needs."""
        return self._sp.get_piece_size()

    def encode_batch(self, texts: Sequence[str], max_len: int | None = None) -> np.ndarray:
        """int32 [N, max_len] (default: the conventions' max_len): texts lowercased, then
        ids with EOS and padding by the conventions (see text_conventions.py)."""
        c = self.conventions
        # Lowercasing here too, not only in the training pipeline's clean_captions: eval
        # prompts and embed's texts must reach the model as the training captions did.
        ids = self._sp.encode([c.lower(t) for t in texts], out_type=int)
        return c.pack(ids, max_len, eos_id=EOS_ID)

    def decode(self, ids: Sequence[int]) -> str:
        """Ids back to text, stopping at the first EOS/pad."""
        ids = list(ids)
        for stop in (EOS_ID, self.conventions.pad_id):
            if stop in ids:
                ids = ids[: ids.index(stop)]
        return self._sp.decode(ids)

    def tf_tokenize(self, strings: tf.Tensor, max_len: int | None = None) -> tf.Tensor:
        """Encodes a [N] string tensor inside a tf.data graph -> int32 [N, max_len]."""
        import tensorflow as tf

        max_len = self.conventions.max_len if max_len is None else max_len

        def _encode(batch: np.ndarray) -> np.ndarray:
            return self.encode_batch([s.decode("utf-8", "replace") for s in batch], max_len)

        ids = tf.numpy_function(_encode, [strings], tf.int32, stateful=False)
        ids.set_shape([strings.shape[0], max_len])
        return ids
