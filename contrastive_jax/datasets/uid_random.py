"""Per-example pseudo-random numbers that depend only on the uid (no stateful RNG).

A filter whose decision is random draws it from here, so an example is kept or dropped the
same way in every run, order, process and epoch (the pipeline's exact resume relies on it).
"""

from __future__ import annotations

import hashlib


def uid_uniform(uid: str | bytes, salt: str | int = "") -> float:
    """A uniform number in [0, 1) from sha1(uid, salt): stable across processes and versions."""
    if isinstance(uid, str):
        uid = uid.encode("utf-8")
    digest = hashlib.sha1(uid + b"\x00" + str(salt).encode("utf-8")).digest()
    return (int.from_bytes(digest[:8], "big") >> 11) / float(1 << 53)
