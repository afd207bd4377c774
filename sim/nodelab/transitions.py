"""The lab's transition log, and the two checks every scenario ends with.

Every source appends JSON lines to its own file in one directory (one
``write()`` per line, ``O_APPEND``, so a killed writer never leaves half a
line in the middle). Each line is one record::

    {"t": <time.monotonic()>, "node": "node1", "src": "drbd", "kind": "role", "value": "Primary", ...}

``t`` is CLOCK_MONOTONIC, which is system-wide: stamps taken in the DRBD
simulator, the libvirt keeper and the harness compare directly.

Kinds that make a node *active* (the group runs on exactly one node):

=======  ====================  =================================================
kind     values                stamped
=======  ====================  =================================================
role     Primary / Secondary   by the DRBD simulator, at the change (src drbd)
mount    mounted / unmounted   when the node's mount table changed (src mount)
vm       active / inactive     by the node's libvirt keeper, at the lifecycle
                               event (src libvirt; only managed domains count)
=======  ====================  =================================================

An interval opens at an active record and closes at the matching inactive
one (same node, kind and key), at the node's ``power``/``off`` record (every
process of the node is gone and its mounts are released), or at the end of
the log. Other kinds are context: ``boot`` (a simulator started),
``conn``/``disk``/``susp`` (DRBD), ``write_ack`` (an acknowledged write),
``power`` (``links_down``, ``off``, ``on``), ``exit`` (a node process
ended), ``fault`` (what the test did).

Checks (pure functions of the records):

- :func:`never_two_active`: any overlap of an active interval of one node
  with one of the other node is a violation; both intervals are reported.
- :func:`lost_writes`: every write acknowledged before a promotion must be
  held by the promoted node at that moment (the simulator lists what its
  disk holds in every ``role``/``Primary`` record).

Write ids are ``<origin>#<seq>`` where the origin is the writing simulator
process (node and a boot token); what a disk holds is kept as ranges of
sequence numbers per origin (:class:`WriteSet`).
"""

from __future__ import annotations

import dataclasses
import json
import os
import threading
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

ACTIVE = {"role": "Primary", "mount": "mounted", "vm": "active"}
INACTIVE = {"role": "Secondary", "mount": "unmounted", "vm": "inactive"}


# --------------------------------------------------------------------------- writing


def append(path: Path | str, record: dict[str, Any]) -> None:
    """Append one record as one line with a single write (safe across processes)."""
    line = (json.dumps(record, separators=(",", ":")) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


class Recorder:
    """Appends records of one source to one file; thread-safe."""

    def __init__(self, path: Path | str, src: str) -> None:
        self.path = Path(path)
        self.src = src
        self._lock = threading.Lock()

    def record(self, node: str, kind: str, value: Any = None, *, t: float | None = None, **fields: Any) -> dict[str, Any]:
        rec = {"t": time.monotonic() if t is None else t, "node": node, "src": self.src, "kind": kind, "value": value, **fields}
        with self._lock:
            append(self.path, rec)
        return rec


# --------------------------------------------------------------------------- reading


@dataclasses.dataclass(frozen=True)
class Record:
    t: float
    node: str
    src: str
    kind: str
    value: Any
    fields: dict[str, Any]

    def get(self, key: str, default: Any = None) -> Any:
        return self.fields.get(key, default)


def parse(lines: Iterable[str]) -> list[Record]:
    out = []
    for line in lines:
        if not line.strip():
            continue
        try:
            d = json.loads(line)
            t, node, src, kind, value = float(d.pop("t")), str(d.pop("node")), str(d.pop("src")), str(d.pop("kind")), d.pop("value", None)
        except (ValueError, KeyError, TypeError):
            continue  # a line cut by a crash mid-write cannot be one of ours (single write), but be lenient
        out.append(Record(t, node, src, kind, value, d))
    return out


def load(directory: Path | str) -> list[Record]:
    """Every record of every ``*.jsonl`` file in ``directory``, in time order."""
    records: list[Record] = []
    for f in sorted(Path(directory).glob("*.jsonl")):
        records.extend(parse(f.read_text(errors="replace").splitlines()))
    records.sort(key=lambda r: r.t)
    return records


# --------------------------------------------------------------------------- intervals


@dataclasses.dataclass(frozen=True)
class Interval:
    node: str
    kind: str
    key: str  # domain for vm, mount id for mount, resource for role
    start: float
    end: float | None  # None: still open at the end of the log
    detail: str = ""

    def overlaps(self, other: Interval) -> bool:
        inf = float("inf")
        return self.start < (other.end if other.end is not None else inf) and other.start < (self.end if self.end is not None else inf)

    def describe(self, origin: float = 0.0) -> str:
        end = "open" if self.end is None else f"{self.end - origin:.3f}"
        what = {"role": "DRBD Primary", "mount": "mounted", "vm": "VM running"}.get(self.kind, self.kind)
        return f"{self.node} {what} {self.key}{' (' + self.detail + ')' if self.detail else ''} [{self.start - origin:.3f}, {end})"


def _key(r: Record) -> str:
    if r.kind == "vm":
        return str(r.get("domain"))
    if r.kind == "mount":
        return str(r.get("mount_id"))
    return str(r.get("resource", "r0"))


def _detail(r: Record) -> str:
    if r.kind == "mount":
        return f"{r.get('source')} on {r.get('target')} {r.get('options', '')}".strip()
    return ""


def is_managed(domain: str, prefixes: Sequence[str], names: Sequence[str]) -> bool:
    return domain in names or any(domain.startswith(p) for p in prefixes)


def intervals(records: Sequence[Record], *, managed_prefixes: Sequence[str] = ("plc",),
              managed_names: Sequence[str] = ()) -> list[Interval]:
    """Active intervals of every node (see the module docstring for the rules)."""
    open_: dict[tuple[str, str, str], tuple[float, str]] = {}
    out: list[Interval] = []

    def close(node: str, kind: str, key: str, t: float) -> None:
        start, detail = open_.pop((node, kind, key))
        out.append(Interval(node, kind, key, start, t, detail))

    for r in sorted(records, key=lambda r: r.t):
        if r.kind == "power" and r.value == "off":
            for (node, kind, key) in [k for k in open_ if k[0] == r.node]:
                close(node, kind, key, r.t)
            continue
        if r.kind not in ACTIVE:
            continue
        if r.kind == "vm" and not is_managed(str(r.get("domain")), managed_prefixes, managed_names):
            continue
        k = (r.node, r.kind, _key(r))
        if r.value == ACTIVE[r.kind] and k not in open_:
            open_[k] = (r.t, _detail(r))
        elif r.value == INACTIVE[r.kind] and k in open_:
            close(*k, r.t)
    for (node, kind, key), (start, detail) in open_.items():
        out.append(Interval(node, kind, key, start, None, detail))
    out.sort(key=lambda i: i.start)
    return out


def active_at(records: Sequence[Record], t: float | None = None, *, managed_prefixes: Sequence[str] = ("plc",),
              managed_names: Sequence[str] = ()) -> dict[str, list[Interval]]:
    """Per node, the intervals active at ``t`` (default: the end of the log)."""
    out: dict[str, list[Interval]] = {}
    for i in intervals(records, managed_prefixes=managed_prefixes, managed_names=managed_names):
        if (t is None and i.end is None) or (t is not None and i.start <= t and (i.end is None or t < i.end)):
            out.setdefault(i.node, []).append(i)
    return out


@dataclasses.dataclass(frozen=True)
class Overlap:
    a: Interval
    b: Interval

    def describe(self, origin: float = 0.0) -> str:
        return f"two active: {self.a.describe(origin)} overlaps {self.b.describe(origin)}"


def never_two_active(records: Sequence[Record], *, managed_prefixes: Sequence[str] = ("plc",),
                     managed_names: Sequence[str] = ()) -> list[Overlap]:
    """Every pair of active intervals of different nodes that overlap in time."""
    ivs = intervals(records, managed_prefixes=managed_prefixes, managed_names=managed_names)
    found = []
    for i, a in enumerate(ivs):
        for b in ivs[i + 1:]:
            if a.node != b.node and a.overlaps(b):
                found.append(Overlap(a, b))
    return found


# --------------------------------------------------------------------------- writes


class WriteSet:
    """The writes a disk holds: per origin, sorted disjoint ranges of sequence numbers."""

    def __init__(self, ranges: dict[str, list[list[int]]] | None = None) -> None:
        self.ranges: dict[str, list[list[int]]] = {o: [list(r) for r in rs] for o, rs in (ranges or {}).items()}

    @staticmethod
    def split(wid: str) -> tuple[str, int]:
        origin, _, seq = wid.rpartition("#")
        return origin, int(seq)

    def add(self, wid: str) -> None:
        origin, seq = self.split(wid)
        rs = self.ranges.setdefault(origin, [])
        for r in rs:
            if r[0] <= seq <= r[1]:
                return
        rs.append([seq, seq])
        rs.sort()
        merged: list[list[int]] = []
        for r in rs:
            if merged and r[0] <= merged[-1][1] + 1:
                merged[-1][1] = max(merged[-1][1], r[1])
            else:
                merged.append(r)
        self.ranges[origin] = merged

    def __contains__(self, wid: object) -> bool:
        if not isinstance(wid, str):
            return False
        origin, seq = self.split(wid)
        return any(lo <= seq <= hi for lo, hi in self.ranges.get(origin, []))

    def count(self) -> int:
        return sum(hi - lo + 1 for rs in self.ranges.values() for lo, hi in rs)

    def to_json(self) -> dict[str, list[list[int]]]:
        return {o: [list(r) for r in rs] for o, rs in self.ranges.items()}


@dataclasses.dataclass(frozen=True)
class LostWrite:
    write: str
    acked: Record
    promotion: Record

    def describe(self, origin: float = 0.0) -> str:
        return (f"write {self.write} acknowledged by {self.acked.node} at {self.acked.t - origin:.3f} is missing on "
                f"{self.promotion.node}, promoted at {self.promotion.t - origin:.3f}")


def lost_writes(records: Sequence[Record]) -> list[LostWrite]:
    """Acknowledged writes that a later promotion did not hold."""
    acks: list[Record] = []
    lost: list[LostWrite] = []
    for r in sorted(records, key=lambda r: r.t):
        if r.kind == "write_ack":
            acks.append(r)
        elif r.kind == "role" and r.value == "Primary":
            held = WriteSet(r.get("held") or {})
            lost.extend(LostWrite(str(a.get("id")), a, r) for a in acks if str(a.get("id")) not in held)
    return lost


def report(records: Sequence[Record], *, managed_prefixes: Sequence[str] = ("plc",), managed_names: Sequence[str] = (),
           allow_lost_writes: bool = False) -> list[str]:
    """One line per violation of either check, times relative to the first record."""
    origin = records[0].t if records else 0.0
    lines = [o.describe(origin) for o in never_two_active(records, managed_prefixes=managed_prefixes, managed_names=managed_names)]
    if not allow_lost_writes:
        lines += [w.describe(origin) for w in lost_writes(records)]
    return lines


def timeline(records: Sequence[Record], *, kinds: Iterable[str] | None = None) -> str:
    """A readable listing (for failure messages): relative time, node, source, kind, value."""
    wanted = set(kinds) if kinds is not None else None
    origin = records[0].t if records else 0.0
    rows = []
    for r in records:
        if wanted is not None and r.kind not in wanted:
            continue
        extra = " ".join(f"{k}={v}" for k, v in r.fields.items() if k != "held")
        rows.append(f"{r.t - origin:9.3f} {r.node:6} {r.src:7} {r.kind:9} {r.value} {extra}".rstrip())
    return "\n".join(rows)
