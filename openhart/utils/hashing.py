"""Stable hashes: the same number in every process, on every machine and Python version.

Python's ``hash`` is salted per process, so anything that must agree across ranks, resumed runs or
machines hashes through here. New code uses :func:`derive_seed`. The other two are kept bit for
bit because their values are already part of things made with them: :func:`stable_hash` decides
the emoji dataset's train/test split and captions, :func:`mix_seed` the order in which a
resumed run reads its data.
"""

from __future__ import annotations

import hashlib
from typing import Any


def derive_seed(*parts: Any) -> int:
    """A 63-bit seed from any tuple of values (training generators, synthesis plans)."""
    digest = hashlib.sha256(":".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def stable_hash(text: str) -> int:
    """A 64-bit hash of a string (the emoji dataset's split and caption choices)."""
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little")


def mix_seed(*parts: int) -> int:
    """A 63-bit seed from several ints (data shuffling and sampling streams)."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1
