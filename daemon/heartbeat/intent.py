"""The admin intent record: persisted here, replicated to the peer.

A change made on either node gets ``version = max(ours, the peer's) + 1`` and
this node's name as ``origin``; the record with the higher
:meth:`AdminIntent.order` wins on both nodes (ties by node name). Every
heartbeat carries the whole record, so replication repeats until the peer
holds the same one, which is its acknowledgement.

Invariants:
- A record is persisted (temp file, fsync, rename, fsync of the directory)
  before this node uses or announces it, so an acknowledgement means the
  peer has it on disk.
- Adopting never goes backwards: a record with a lower order is ignored.
- An unreadable intent file stops the daemon with a clear error instead of
  silently starting from an empty record (that could drop a maintenance
  flag or a ban).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path

from ..persist import atomic_write_json, ensure_dir
from .codec import CodecError, from_wire, to_wire
from .model import MAX_CLEANUPS, AdminIntent

INTENT_FILE = "intent.json"
FORMAT = 1


class IntentError(Exception):
    pass


class IntentStore:
    def __init__(self, state_dir: Path, node: str) -> None:
        self.path = state_dir / INTENT_FILE
        self.node = node
        self.record = AdminIntent()
        self.peer_record: AdminIntent | None = None  # as the peer last reported it
        self.superseded: AdminIntent | None = None  # our own change replaced before the peer acknowledged it

    def load(self) -> AdminIntent:
        try:
            raw = json.loads(self.path.read_bytes())
        except FileNotFoundError:
            return self.record
        except (OSError, ValueError) as e:
            raise IntentError(f"{self.path} is unreadable ({e}); move it away to start from the peer's copy") from None
        if not isinstance(raw, dict) or raw.get("format") != FORMAT:
            raise IntentError(f"{self.path}: unknown format {raw.get('format') if isinstance(raw, dict) else raw!r}")
        try:
            self.record = from_wire(AdminIntent, raw.get("intent"))
        except CodecError as e:
            raise IntentError(f"{self.path}: {e}") from None
        return self.record

    def _persist(self, rec: AdminIntent) -> None:
        ensure_dir(self.path.parent)
        atomic_write_json(self.path, {"format": FORMAT, "intent": to_wire(rec), "summary": rec.describe()})

    @property
    def acknowledged(self) -> bool:
        return self.peer_record is not None and self.peer_record.order() == self.record.order()

    def change(self, edit: Callable[[AdminIntent], AdminIntent], wall_now: float) -> AdminIntent:
        """Apply an operator's change on top of the current record; persisted before it returns."""
        base = self.record
        edited = edit(base)
        floor = max(base.version, self.peer_record.version if self.peer_record else 0)
        new = dataclasses.replace(edited, version=floor + 1, origin=self.node, changed_at=wall_now,
                                  cleanups=tuple(sorted(edited.cleanups, key=lambda c: c.serial))[-MAX_CLEANUPS:])
        self._persist(new)
        self.record = new
        self.superseded = None
        return new

    def offer(self, theirs: AdminIntent) -> bool:
        """The peer's record; adopted (after persisting) when it wins. Returns True when adopted."""
        was_acknowledged = self.acknowledged
        self.peer_record = theirs
        if theirs.order() <= self.record.order():
            return False
        mine = self.record
        self._persist(theirs)
        self.record = theirs
        if mine.origin == self.node and not was_acknowledged:
            # Replaced before the peer confirmed it (usually a concurrent change that won the
            # tie): report it rather than merge, so the operator checks the record.
            self.superseded = mine
        return True
