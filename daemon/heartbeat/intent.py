"""The admin intent record: persisted here, replicated to the peer.

A change made on either node gets ``version = max(ours, the peer's) + 1`` and
this node's name as ``origin``; the record with the higher
:meth:`AdminIntent.order` wins on both nodes (ties by node name). Every
heartbeat names the record its sender holds (:class:`IntentRef`) and
carries the whole record while the peer names another one, so replication
repeats until the peer names ours: that is its acknowledgement.

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
from .model import MAX_CLEANUPS, AdminIntent, IntentRef

INTENT_FILE = "intent.json"
FORMAT = 1


class IntentError(Exception):
    pass


class IntentStore:
    def __init__(self, state_dir: Path, node: str) -> None:
        self.path = state_dir / INTENT_FILE
        self.node = node
        self.record = AdminIntent()
        self.peer_ref: IntentRef | None = None  # the record the peer last said it holds
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
        return self.peer_ref == self.record.ref

    def outgoing(self) -> tuple[IntentRef, AdminIntent | None]:
        """What the next heartbeat carries: our ref, and the record unless the peer holds it."""
        return self.record.ref, None if self.acknowledged else self.record

    def change(self, edit: Callable[[AdminIntent], AdminIntent], wall_now: float) -> AdminIntent:
        """Apply an operator's change on top of the current record; persisted before it returns."""
        base = self.record
        edited = edit(base)
        floor = max(base.version, self.peer_ref.version if self.peer_ref else 0)
        new = dataclasses.replace(edited, version=floor + 1, origin=self.node, changed_at=wall_now,
                                  cleanups=tuple(sorted(edited.cleanups, key=lambda c: c.serial))[-MAX_CLEANUPS:])
        self._persist(new)
        self.record = new
        self.superseded = None
        return new

    def offer(self, ref: IntentRef, theirs: AdminIntent | None) -> bool:
        """What the peer holds (and the record itself, when sent); adopted (persisted first) when it wins.

        Returns True when adopted.
        """
        was_acknowledged = self.acknowledged
        if theirs is not None:
            ref = theirs.ref  # computed here, not taken on trust
        self.peer_ref = ref
        if theirs is None or theirs.order() <= self.record.order():
            return False
        mine = self.record
        self._persist(theirs)
        self.record = theirs
        if mine.origin == self.node and not was_acknowledged:
            # Replaced before the peer confirmed it (usually a concurrent change that won the
            # tie): report it rather than merge, so the operator checks the record.
            self.superseded = mine
        return True

    def adopt_copy(self, rec: AdminIntent) -> bool:
        """The copy found on the replicated filesystem (whoever mounts it gets the newest): adopted,
        persisted first, when it wins. What the peer holds is not changed by it."""
        if rec.order() <= self.record.order():
            return False
        self._persist(rec)
        self.record = rec
        return True
