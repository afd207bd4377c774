"""Heartbeat keys: HMAC-SHA256 signing and verification, with key rotation.

A :class:`Keyring` holds the key from ``cluster.key_file`` (used to sign)
and, during a rotation, the one from ``cluster.next_key_file`` (accepted as
well). Keys are named by a short id (a hash of the key, never the key) so
``status`` can say which key the peer uses without revealing it.

Invariants:
- Verification computes the MAC under every key in the ring and compares
  each with :func:`hmac.compare_digest`, so the time taken does not depend on
  where a forged tag first differs, nor on which key matched.
- A key shorter than :data:`MIN_KEY_BYTES` is refused (config checks the same
  at load; this guards a file that changed since).
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
from pathlib import Path
from typing import Literal

from ..config import MIN_KEY_BYTES, ClusterConfig, read_key

TAG_BYTES = 32
KeyName = Literal["key_file", "next_key_file"]


class KeyProblem(Exception):
    """A key file cannot be used; the message says which and why."""


def key_id(secret: bytes) -> str:
    return hashlib.sha256(b"clever-cluster key id\0" + secret).hexdigest()[:8]


@dataclasses.dataclass(frozen=True)
class Key:
    name: KeyName
    path: Path
    secret: bytes = dataclasses.field(repr=False)

    @property
    def id(self) -> str:
        return key_id(self.secret)


@dataclasses.dataclass(frozen=True)
class Keyring:
    current: Key
    next: Key | None = None

    def sign(self, data: bytes) -> bytes:
        return hmac.new(self.current.secret, data, hashlib.sha256).digest()

    def verify(self, data: bytes, tag: bytes) -> Key | None:
        """The key whose MAC over ``data`` equals ``tag``, or None."""
        found: Key | None = None
        for key in (self.current, self.next):
            if key is None:
                continue
            expected = hmac.new(key.secret, data, hashlib.sha256).digest()
            if hmac.compare_digest(expected, tag) and found is None:
                found = key
        return found

    def describe(self) -> dict[str, str | None]:
        return {"sending": self.current.id, "key_file": self.current.id,
                "next_key_file": self.next.id if self.next else None}


def _read(path: Path, name: KeyName) -> Key:
    try:
        secret = read_key(path)
    except OSError as e:
        raise KeyProblem(f"cluster.{name}: cannot read {path}: {e.strerror or e}") from None
    if len(secret) < MIN_KEY_BYTES:
        raise KeyProblem(f"cluster.{name}: {path} holds {len(secret)} bytes; at least {MIN_KEY_BYTES} are required")
    return Key(name, path, secret)


def load_keyring(cluster: ClusterConfig) -> Keyring:
    current = _read(cluster.key_file, "key_file")
    nxt = _read(cluster.next_key_file, "next_key_file") if cluster.next_key_file is not None else None
    return Keyring(current, nxt)
