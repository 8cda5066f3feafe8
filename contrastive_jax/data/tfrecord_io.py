"""TFRecord framing in Python, for files TensorFlow's own readers cannot reach (gs:// paths
go through the project's path layer, see paths.py).

A record is: length (uint64, little-endian), masked CRC-32C of those 8 bytes (uint32),
the data, masked CRC-32C of the data (uint32), as in TensorFlow's record_writer.cc. Both
checksums are verified, as TensorFlow's reader does.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from typing import BinaryIO

import google_crc32c

from contrastive_jax import paths

_MASK_DELTA = 0xA282EAD8


class DataLoss(Exception):  # noqa: N818 - named after TensorFlow's DataLossError
    """A truncated or corrupt record (what tf.errors.DataLossError is for TF's reader)."""


def masked_crc(data: bytes) -> int:
    crc = google_crc32c.value(data)
    return (((crc >> 15) | (crc << 17)) + _MASK_DELTA) & 0xFFFFFFFF


def _read_exactly(f: BinaryIO, n: int, what: str) -> bytes:
    data = f.read(n)
    if len(data) != n:
        raise DataLoss(f"truncated record: {what} has {len(data)} of {n} bytes")
    return data


def read_records(f: BinaryIO) -> Iterator[bytes]:
    """The records of the open binary file `f`, checked; DataLoss at the first bad one."""
    while True:
        header = f.read(12)
        if not header:
            return
        if len(header) != 12:
            raise DataLoss(f"truncated record header: {len(header)} of 12 bytes")
        length, length_crc = struct.unpack("<QI", header)
        if masked_crc(header[:8]) != length_crc:
            raise DataLoss("corrupted record: the length's checksum does not match")
        data = _read_exactly(f, length, "the data")
        (data_crc,) = struct.unpack("<I", _read_exactly(f, 4, "the data checksum"))
        if masked_crc(data) != data_crc:
            raise DataLoss("corrupted record: the data's checksum does not match")
        yield data


def iterate(path: str) -> Iterator[bytes]:
    """The records of TFRecord file `path` (local or a URL), in order."""
    with paths.open_file(path, "rb") as f:
        yield from read_records(f)


def encode(data: bytes) -> bytes:
    """One record in TFRecord framing (for writers that cannot use tf.io.TFRecordWriter)."""
    header = struct.pack("<Q", len(data))
    return (header + struct.pack("<I", masked_crc(header)) + data
            + struct.pack("<I", masked_crc(data)))
