"""Crash-safe persistence of small state files.

Invariant: after :func:`atomic_write` returns, the new content is on disk and
a crash at any point leaves either the old or the new file, never a torn one
(write a temporary file, fsync it, rename over the target, fsync the
directory). Readers never see partial JSON. Appended journal lines are never
glued onto a line torn by a crash.

The primitives live in ``fencing/durable.py`` because fencing (which may not
import the daemon) needs them too; this module adds the JSON conveniences.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..fencing.durable import append_line_fsync, atomic_write, fsync_dir

__all__ = ["append_fsync", "atomic_write", "atomic_write_json", "ensure_dir", "fsync_dir", "read_json"]


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write(Path(path), (json.dumps(obj, sort_keys=True, indent=1) + "\n").encode())


def read_json(path: Path) -> Any | None:
    """The parsed file, or None when it does not exist. Corrupt JSON raises ValueError."""
    try:
        raw = Path(path).read_bytes()
    except FileNotFoundError:
        return None
    return json.loads(raw)


def append_fsync(path: Path, line: str) -> None:
    """Append one line to a journal file and fsync it (and the directory on create)."""
    append_line_fsync(Path(path), line.encode())


def ensure_dir(path: Path, mode: int = 0o700) -> Path:
    path = Path(path)
    path.mkdir(mode=mode, parents=True, exist_ok=True)
    return path
