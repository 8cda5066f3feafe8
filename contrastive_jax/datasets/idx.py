"""Read and write the idx format (MNIST, Fashion-MNIST), gzipped or plain, with numpy only."""

from __future__ import annotations

import gzip
import os

import numpy as np

# idx magic: two zero bytes, a dtype code, the number of dimensions. Only unsigned bytes
# occur in (Fashion-)MNIST; other codes are rejected rather than guessed.
_UBYTE = 0x08
_IMAGES_MAGIC = 0x00000803  # uint8, 3 dims (n, rows, cols)
_LABELS_MAGIC = 0x00000801  # uint8, 1 dim (n,)


class IdxFormatError(ValueError):
    """The file is not a valid idx file (wrong magic, truncated, bad shape)."""


def _open(path: str | os.PathLike) -> bytes:
    opener = gzip.open if str(path).endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            return f.read()
    except (EOFError, gzip.BadGzipFile, OSError) as e:
        # A truncated .gz raises EOFError deep inside gzip; say which file it was.
        if isinstance(e, FileNotFoundError):
            raise
        raise IdxFormatError(f"{path}: cannot read (truncated or corrupt gzip?): {e}") from e


def read_idx(path: str | os.PathLike, expected_magic: int | None = None) -> np.ndarray:
    """Parses an idx file into a uint8 array of the shape its header declares."""
    data = _open(path)
    if len(data) < 4:
        raise IdxFormatError(f"{path}: file too short ({len(data)} bytes) for an idx header")
    magic = int.from_bytes(data[:4], "big")
    if expected_magic is not None and magic != expected_magic:
        raise IdxFormatError(
            f"{path}: wrong magic number 0x{magic:08x}, expected 0x{expected_magic:08x}"
        )
    zeros, dtype_code, ndim = magic >> 16, (magic >> 8) & 0xFF, magic & 0xFF
    if zeros != 0 or dtype_code != _UBYTE or ndim == 0:
        raise IdxFormatError(f"{path}: unsupported idx magic 0x{magic:08x} (uint8 only)")
    header_len = 4 + 4 * ndim
    if len(data) < header_len:
        raise IdxFormatError(f"{path}: truncated header ({len(data)} < {header_len} bytes)")
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = header_len + int(np.prod(shape))
    if len(data) != expected:
        raise IdxFormatError(
            f"{path}: header declares shape {shape} ({expected} bytes) "
            f"but the file has {len(data)} bytes (truncated?)"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header_len).reshape(shape)


def read_images(path: str | os.PathLike) -> np.ndarray:
    """Reads an idx3 image file: uint8 [n, rows, cols]."""
    return read_idx(path, _IMAGES_MAGIC)


def read_labels(path: str | os.PathLike) -> np.ndarray:
    """Reads an idx1 label file: uint8 [n]."""
    return read_idx(path, _LABELS_MAGIC)


def write_idx(path: str | os.PathLike, array: np.ndarray) -> None:
    """Writes a uint8 array as idx (gzipped when the path ends in .gz); used by tests/tools."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = (0x0800 | array.ndim).to_bytes(4, "big")
    header += b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "wb") as f:
        f.write(header + array.tobytes())
