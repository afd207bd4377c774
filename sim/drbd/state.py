"""The simulated DRBD resource: its state, its metadata and DRBD's rules, without I/O.

One :class:`Resource` per simulated node, two nodes per resource. The server
(``server.py``) does the I/O (peer TCP link, loop device, handlers) and calls
these methods; everything that decides lives here so the rules read in one
place.

Rules kept (DRBD 8.4 and 9, ``shared/reference/drbd.md``):
- No second Primary while Connected (-1), unless allow-two-primaries; a node
  that let its peer promote refuses its own promotion until the peer reports;
  two Primaries do not connect (the attempt is dropped and retried).
- Promotion needs UpToDate data (-2, exit 17); a Consistent disk (a node that
  attached without its peer) may promote only after the fence-peer handler
  outdated the peer; with fencing configured, a disconnected promotion whose
  peer disk is unknown needs the handler to succeed, else -7.
- Writes fail when neither the local disk nor a connected peer is UpToDate.
- A disk outdated by its peer cannot promote; ``outdate`` is refused while
  Connected (-6) and on Inconsistent disks (-16, exit 5).
- New data generation (current UUID) when a disconnected Primary writes (9:
  at the first write; 8.4: when a Primary loses its peer or promotes alone).
- Both nodes writing while disconnected: their bitmap UUIDs match and their
  current UUIDs differ, so the next handshake finds split brain and both go
  StandAlone; the other cases decide the resync direction.
"""

from __future__ import annotations

import dataclasses
import random
from typing import Any, ClassVar

MASK = ~1 & 0xFFFFFFFFFFFFFFFF


class Refused(Exception):
    """A state change DRBD refuses: ``(code) text``, with drbdsetup's exit code."""

    TEXT: ClassVar[dict[int, str]] = {
        -1: "Multiple primaries not allowed by config",
        -2: "Need access to UpToDate data",
        -6: "Refusing to be Outdated while Connected",
        -7: "Refusing to be Primary while peer is not outdated",
        -12: "Device is held open by someone",
        -16: "Disk state is lower than outdated",
    }

    def __init__(self, code: int, info: list[str] | None = None) -> None:
        self.code = code
        self.info = info or []
        super().__init__(f"({code}) {self.TEXT.get(code, 'State change failed')}")

    @property
    def exit_code(self) -> int:
        return {-2: 17, -16: 5}.get(self.code, 11)


class Failure(Exception):
    """A configuration-level error ``Failure: (NNN) text``, exit 10."""

    def __init__(self, code: int, text: str) -> None:
        self.code = code
        self.text = text
        super().__init__(f"({code}) {text}")


def new_uuid(rng: random.Random) -> int:
    return rng.getrandbits(64) & MASK


@dataclasses.dataclass
class Meta:
    """What DRBD keeps in its on-disk metadata (survives a simulator restart)."""

    current: int
    bitmap: int = 0
    history: list[int] = dataclasses.field(default_factory=lambda: [0, 0])
    disk: str = "UpToDate"  # UpToDate, Consistent, Outdated, Inconsistent
    oos_kib: int = 0
    peer_outdated: bool = False
    was_primary: bool = False
    full_sync: bool = False

    def rotate(self, rng: random.Random, primary: bool) -> None:
        """A new data generation: the old current becomes the bitmap base (or history)."""
        if self.bitmap == 0:
            self.bitmap = self.current & MASK
        else:
            self.history = [self.current & MASK, self.history[0]]
        self.current = new_uuid(rng) | (1 if primary else 0)

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Meta:
        return cls(**d)


@dataclasses.dataclass
class Handshake:
    """The outcome of connecting, from this node's point of view."""

    kind: str  # "no-sync", "source", "target", "split-brain", "unrelated", "primary-would-be-target"
    kib: int = 0


def decide(me: dict[str, Any], peer: dict[str, Any]) -> Handshake:
    """Symmetric: ``decide(a, b)`` and ``decide(b, a)`` agree (source/target swapped)."""
    a, b = Meta.from_json(me["meta"]), Meta.from_json(peer["meta"])
    if "Diskless" in (me["disk"], peer["disk"]):
        return Handshake("no-sync")  # a diskless node has no data to compare or resync
    if me["discard"] and peer["discard"]:
        return Handshake("unrelated")
    if me["discard"] or peer["discard"]:
        if (me["role"] if me["discard"] else peer["role"]) == "Primary":
            return Handshake("unrelated")
        kib = a.oos_kib + b.oos_kib
        return Handshake("target" if me["discard"] else "source", kib)
    ca, cb = a.current & MASK, b.current & MASK
    if a.disk == "Inconsistent" and b.disk != "Inconsistent":
        out = Handshake("target", max(a.oos_kib, b.oos_kib, 1))
    elif b.disk == "Inconsistent" and a.disk != "Inconsistent":
        out = Handshake("source", max(a.oos_kib, b.oos_kib, 1))
    elif ca == cb:
        if a.oos_kib or b.oos_kib:
            # Same generation, bits set (an interrupted resync): the UpToDate side sends.
            src = _better(a, b, me, peer)
            out = Handshake("source" if src else "target", a.oos_kib + b.oos_kib)
        else:
            out = Handshake("no-sync")
    elif a.bitmap and a.bitmap == cb:
        out = Handshake("source", a.oos_kib + b.oos_kib)
    elif b.bitmap and b.bitmap == ca:
        out = Handshake("target", a.oos_kib + b.oos_kib)
    elif a.bitmap and a.bitmap == b.bitmap:
        return Handshake("split-brain", a.oos_kib + b.oos_kib)
    elif cb in a.history:
        out = Handshake("source", -1)
    elif ca in b.history:
        out = Handshake("target", -1)
    else:
        return Handshake("unrelated")
    if out.kind == "target" and me["role"] == "Primary":
        return Handshake("primary-would-be-target")
    if out.kind == "source" and peer["role"] == "Primary":
        return Handshake("primary-would-be-target")
    if out.kind == "no-sync" or out.kind in ("source", "target"):
        return out
    return out


def _better(a: Meta, b: Meta, me: dict[str, Any], peer: dict[str, Any]) -> bool:
    rank = {"UpToDate": 3, "Consistent": 2, "Outdated": 1, "Inconsistent": 0}
    ra, rb = rank.get(a.disk, 0), rank.get(b.disk, 0)
    if ra != rb:
        return ra > rb
    return bool(me["node_id"] < peer["node_id"])


def attach_disk(meta: Meta) -> str:
    """The disk state right after attach, before any peer is seen."""
    if meta.disk == "UpToDate":
        return "UpToDate" if meta.peer_outdated else "Consistent"
    return meta.disk


def promotion_info(role: str, disk: str, peer_role: str, peer_disk: str) -> tuple[bool, int]:
    """drbdsetup's may_promote / promotion_score for one volume and one peer."""
    replicas = (disk == "UpToDate") + (peer_disk == "UpToDate")
    if replicas == 0:
        return False, 0
    may = role != "Primary" and peer_role != "Primary"
    has_disk = disk in ("UpToDate", "Consistent", "Inconsistent")
    return may, 10000 * has_disk + 100 * (disk == "UpToDate") + replicas
