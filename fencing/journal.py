"""The fence record journal: the durable proof that the peer was off.

One JSON line per record in ``<state_dir>/fence-records.jsonl``, each with a
SHA-256 of its body. Invariants:
- :meth:`FenceJournal.append` returns only after the line is fsynced (and the
  directory entry, when the file was new). The coordinator tells nobody
  "confirmed" before it returns.
- A record serves exactly one loss episode: :meth:`record_for` matches the
  whole episode (peer, peer incarnation, peer boot id, local counter), never
  "the latest record for this peer".
- A torn last line (power lost mid-write) or a garbled line is skipped and
  counted, never read as a record.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import threading
from pathlib import Path
from typing import Any

from .durable import append_line_fsync
from .types import Episode

FORMAT_VERSION = 1


@dataclasses.dataclass(frozen=True)
class FenceRecord:
    episode: Episode
    target: str
    target_incarnation: int
    kind: str  # "device": devices confirmed OFF; "operator": clevervm confirm-fenced
    level: int | None  # 1-based level that confirmed; None for an operator's confirmation
    devices: tuple[str, ...]
    evidence: tuple[str, ...]
    started: float  # wall clock: the fence operation began
    confirmed: float  # wall clock: the last device confirmed OFF (or the operator confirmed)
    local_node: str
    local_boot_id: str
    operator: str | None = None
    accept_data_loss: bool = False  # operator: `clevervm confirm-fenced --accept-data-loss` (DESIGN S3)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["devices"] = list(self.devices)
        d["evidence"] = list(self.evidence)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FenceRecord:
        ep = d["episode"]
        return cls(
            episode=Episode(str(ep["peer"]), int(ep["peer_incarnation"]), str(ep["peer_boot_id"]), int(ep["counter"])),
            target=str(d["target"]), target_incarnation=int(d["target_incarnation"]), kind=str(d["kind"]),
            level=None if d["level"] is None else int(d["level"]), devices=tuple(map(str, d["devices"])),
            evidence=tuple(map(str, d["evidence"])), started=float(d["started"]), confirmed=float(d["confirmed"]),
            local_node=str(d["local_node"]), local_boot_id=str(d["local_boot_id"]),
            operator=None if d.get("operator") is None else str(d["operator"]),
            accept_data_loss=d.get("accept_data_loss") is True)


def _digest(body: str) -> str:
    return hashlib.sha256(body.encode()).hexdigest()


def encode(record: FenceRecord) -> bytes:
    body = json.dumps(record.to_dict(), sort_keys=True, separators=(",", ":"))
    return json.dumps({"v": FORMAT_VERSION, "sha256": _digest(body), "record": body}, separators=(",", ":")).encode()


def decode(line: bytes) -> FenceRecord:
    """One journal line as a record; ValueError when torn, garbled or of another version."""
    try:
        outer = json.loads(line)
        if outer.get("v") != FORMAT_VERSION:
            raise ValueError(f"format version {outer.get('v')!r}")
        body = outer["record"]
        if not isinstance(body, str) or _digest(body) != outer["sha256"]:
            raise ValueError("checksum mismatch")
        return FenceRecord.from_dict(json.loads(body))
    except (KeyError, TypeError, AttributeError, json.JSONDecodeError) as e:
        raise ValueError(f"unreadable record: {e}") from None


class FenceJournal:
    """Append-only fence records for one node."""

    FILENAME = "fence-records.jsonl"

    def __init__(self, state_dir: Path) -> None:
        self.path = Path(state_dir) / self.FILENAME
        self.bad_lines = 0
        self._lock = threading.Lock()
        self._records = self._load()

    def _load(self) -> list[FenceRecord]:
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return []
        out = []
        for line in raw.split(b"\n"):
            if not line.strip():
                continue
            try:
                out.append(decode(line))
            except ValueError:
                self.bad_lines += 1
        return out

    def append(self, record: FenceRecord) -> None:
        """Durably append ``record``; returns after fsync. Safe to call from a thread."""
        with self._lock:
            append_line_fsync(self.path, encode(record))
            self._records.append(record)

    def records(self) -> list[FenceRecord]:
        return list(self._records)

    def record_for(self, episode: Episode) -> FenceRecord | None:
        """The record of exactly this loss episode, if one is on disk."""
        for r in reversed(self._records):
            if r.episode == episode:
                return r
        return None
