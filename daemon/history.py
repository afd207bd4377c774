"""Decision history and failover/handover timelines with per-phase durations (``clevervm history``).

The decision loop calls :meth:`History.decision` on every change of reason
code and :meth:`History.mark` for what the executor does and sees (a fence
started or confirmed, a sequence ended); the resource group's run records
give the per-step timings. A timeline opens at its first mark (the peer
lost; a handover decided; a grant acknowledged) and closes at its last (the
resources running here, or given to the peer), or when a newer one opens.

Kinds of timeline, as this node sees them:
- ``failover`` (the survivor): peer_lost -> fence_started -> fence_confirmed
  -> promote_started -> the promote's steps -> active;
- ``handover_out`` (the node giving the resources up): handover_decided ->
  the demote's steps -> granted -> peer_active;
- ``handover_in`` (the node taking them): acknowledged -> promote_started ->
  the promote's steps -> active.

Invariants: bounded memory (the last ``keep`` decisions and timelines); all
times are recorded twice, monotonic for durations and wall clock for people;
``on_closed`` is called once per timeline, when it closes (metrics).
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Callable
from typing import Any

from clever_cluster.policy.reasons import Code

from .resources.facts import RunRecord

LOSS_CODES = frozenset({Code.PEER_LOST_WAITING_DELAY, Code.PEER_LOST_PROBING_GATEWAY, Code.PEER_LOST_FENCING,
                        Code.FENCE_IN_PROGRESS, Code.PEER_LOST_NO_GATEWAY, Code.PEER_LOST_CANNOT_TAKE_OVER})


@dataclasses.dataclass(frozen=True)
class DecisionEntry:
    mono: float
    wall: float
    code: str
    phase: str
    sentence: str
    actions: str
    epoch: str

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class Mark:
    name: str
    mono: float
    wall: float
    detail: str = ""


@dataclasses.dataclass
class Timeline:
    kind: str  # failover, handover_out, handover_in
    marks: list[Mark] = dataclasses.field(default_factory=list)
    runs: list[RunRecord] = dataclasses.field(default_factory=list)
    done: bool = False
    outcome: str = "in progress"

    def add(self, m: Mark) -> None:
        if not any(x.name == m.name for x in self.marks):
            self.marks.append(m)

    def to_json(self) -> dict[str, Any]:
        phases = []
        for a, b in zip(self.marks, self.marks[1:], strict=False):
            phases.append({"from": a.name, "to": b.name, "seconds": round(b.mono - a.mono, 3)})
        start = self.marks[0] if self.marks else None
        end = self.marks[-1] if self.marks else None
        return {
            "kind": self.kind, "outcome": self.outcome, "done": self.done,
            "started_at": start.wall if start else None,
            "total_seconds": round(end.mono - start.mono, 3) if start and end else None,
            "marks": [{"name": m.name, "at": m.wall, "after_seconds": round(m.mono - start.mono, 3) if start else 0.0,
                       "detail": m.detail} for m in self.marks],
            "phases": phases,
            "sequences": [{"kind": r.kind, "token": r.token, "outcome": r.outcome, "seconds": r.seconds,
                           "steps": [{"step": p.step, "action": p.action, "seconds": round(p.seconds, 3), "outcome": p.outcome,
                                      "detail": p.detail} for p in r.phases]} for r in self.runs],
        }


class History:
    def __init__(self, keep: int = 200, keep_timelines: int = 20, on_closed: Callable[[Timeline], None] | None = None) -> None:
        self.decisions: collections.deque[DecisionEntry] = collections.deque(maxlen=keep)
        self.timelines: collections.deque[Timeline] = collections.deque(maxlen=keep_timelines)
        self.counts: collections.Counter[str] = collections.Counter()
        self.on_closed = on_closed or (lambda t: None)

    @property
    def current(self) -> Timeline | None:
        t = self.timelines[-1] if self.timelines else None
        return t if t is not None and not t.done else None

    def _open(self, kind: str) -> Timeline:
        cur = self.current
        if cur is not None and cur.kind == kind:
            return cur
        if cur is not None:
            cur.done, cur.outcome = True, "superseded"
            self.on_closed(cur)
        t = Timeline(kind)
        self.timelines.append(t)
        return t

    def decision(self, entry: DecisionEntry) -> None:
        self.decisions.append(entry)
        self.counts[entry.code] += 1
        code = entry.code
        if code in LOSS_CODES:
            cur = self.current
            if cur is None or cur.kind != "failover":
                self._open("failover").add(Mark("peer_lost", entry.mono, entry.wall, entry.sentence))
        elif code == Code.HANDOVER_DEMOTING:
            self._open("handover_out").add(Mark("handover_decided", entry.mono, entry.wall, entry.sentence))
        elif code == Code.HANDOVER_GRANTED and self.current is not None and self.current.kind == "handover_out":
            self.current.add(Mark("granted", entry.mono, entry.wall, entry.sentence))
        elif code == Code.HANDOVER_ACKNOWLEDGED:
            self._open("handover_in").add(Mark("acknowledged", entry.mono, entry.wall, entry.sentence))
        elif code == Code.ELECTION_PROMOTING and self.current is not None and self.current.kind == "handover_in":
            self.current.kind = "cold_start"  # the acknowledged grant was a cold-start yield
        elif code in (Code.NO_ACTION_SECONDARY, Code.SHUTDOWN_READY) and self.current is not None \
                and self.current.kind == "handover_out" and any(x.name == "granted" for x in self.current.marks):
            self.current.add(Mark("peer_active", entry.mono, entry.wall, entry.sentence))
            self._close("handed over")
        elif code == Code.NO_ACTION_PRIMARY and self.current is not None and self.current.kind in ("failover", "handover_in") \
                and any(x.name == "promote_started" for x in self.current.marks):
            self.current.add(Mark("active", entry.mono, entry.wall, entry.sentence))
            self._close("active here")
        elif code == Code.NO_ACTION_PRIMARY and self.current is not None and self.current.kind == "failover":
            self.current.add(Mark("peer_back_or_kept", entry.mono, entry.wall, entry.sentence))
            self._close("kept the resources")
        elif code == Code.NO_ACTION_SECONDARY and self.current is not None and self.current.kind == "failover":
            self._close("the peer came back")

    def mark(self, name: str, mono: float, wall: float, detail: str = "") -> None:
        """An executor event (fence_started, fence_confirmed, promote_started, demote_started)."""
        cur = self.current
        if cur is None:
            if name == "promote_started":  # a cold start or the completion of a partial group
                cur = self._open("cold_start")
            else:
                return
        cur.add(Mark(name, mono, wall, detail))

    def run(self, rec: RunRecord) -> None:
        """A finished sequence of the resource group: its steps belong to the current timeline."""
        cur = self.current
        if cur is None:
            return
        cur.runs.append(rec)
        if cur.kind == "cold_start" and rec.kind == "start":
            cur.add(Mark("active" if rec.outcome == "succeeded" else f"start_{rec.outcome}", rec.started_mono + (rec.seconds or 0.0),
                         rec.started_wall + (rec.seconds or 0.0)))
            self._close("active here" if rec.outcome == "succeeded" else rec.outcome)
        elif rec.outcome not in ("succeeded", "running"):
            cur.add(Mark(f"{rec.kind}_{rec.outcome}", rec.started_mono + (rec.seconds or 0.0), rec.started_wall + (rec.seconds or 0.0),
                         rec.error or ""))

    def _close(self, outcome: str) -> None:
        cur = self.current
        if cur is not None:
            cur.done, cur.outcome = True, outcome
            self.on_closed(cur)

    def to_json(self, decisions: int = 50) -> dict[str, Any]:
        return {
            "decisions": [d.to_json() for d in list(self.decisions)[-decisions:]],
            "timelines": [t.to_json() for t in self.timelines],
            "decision_counts": dict(self.counts),
        }
