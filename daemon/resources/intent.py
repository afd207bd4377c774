"""The copy of the admin intent kept on the replicated filesystem (DESIGN section 5).

Whichever node mounts the filesystem finds the newest intent the active node
wrote there. The record itself (target role, bans, standby, maintenance,
version) belongs to the heartbeat/intent code; this module only stores and
loads a JSON-able mapping, so the two stay independent.

Invariants: the copy is written and read only while the replicated
filesystem is mounted here (checked by device number), never on the root
filesystem under an empty mountpoint; a write is atomic and durable
(temporary file, fsync, rename, directory fsync).
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..persist import atomic_write
from .base import ResourceError
from .filesystem import Filesystem

INTENT_DIR = ".clever-cluster"
INTENT_FILE = "admin-intent.json"


def intent_path(fs: Filesystem) -> Path:
    return fs.mountpoint / INTENT_DIR / INTENT_FILE


def _checked_dir(fs: Filesystem, create: bool) -> Path | None:
    dev = fs.replicated_dev()
    if dev is None:
        raise ResourceError(f"{fs.cfg.device} is not mounted on {fs.mountpoint}; the admin-intent copy lives there")
    d = fs.mountpoint / INTENT_DIR
    if create:
        with contextlib.suppress(FileExistsError):
            d.mkdir(mode=0o700)
    try:
        if os.stat(d).st_dev != dev:
            raise ResourceError(f"{d} is not on the replicated filesystem")
    except FileNotFoundError:
        return None
    return d


def write_intent_copy(fs: Filesystem, record: Mapping[str, Any]) -> Path:
    """Store ``record`` (any JSON-able mapping) on the mounted replicated filesystem."""
    d = _checked_dir(fs, create=True)
    assert d is not None
    path = d / INTENT_FILE
    atomic_write(path, (json.dumps(dict(record), sort_keys=True, indent=1) + "\n").encode())
    return path


def read_intent_copy(fs: Filesystem) -> dict[str, Any] | None:
    """The stored record, or None when there is none. ResourceError when unmounted or unreadable."""
    d = _checked_dir(fs, create=False)
    if d is None:
        return None
    try:
        raw = (d / INTENT_FILE).read_bytes()
    except FileNotFoundError:
        return None
    try:
        obj = json.loads(raw)
    except ValueError as e:
        raise ResourceError(f"the admin-intent copy {d / INTENT_FILE} is not valid JSON: {e}") from e
    if not isinstance(obj, dict):
        raise ResourceError(f"the admin-intent copy {d / INTENT_FILE} does not hold an object")
    return obj
