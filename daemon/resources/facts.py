"""Facts the resource group reports: run records with per-phase timings, and failures.

These are frozen values, handed to the world view (policy facts), to
``clevervm status``/``history`` and to metrics. Times are monotonic seconds
(``*_mono``) for arithmetic and wall-clock seconds (``*_wall``) for people.

Invariant: ``RunRecord.held`` is what the run leaves this node holding, as
far as the executor knows (steps started and not stopped), so a failed stop
or rollback can never be mistaken for a clean one.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

RunKind = Literal["start", "stop"]
RunOutcome = Literal[
    "running",  # in flight
    "succeeded",
    "rolled_back",  # a start step failed; everything it did was undone
    "rollback_failed",  # ... and undoing failed too: see ``held``
    "stale",  # the gate went stale; a start was rolled back, a stop left where it was
    "stop_failed",  # a stop step failed after its retries; the node still holds ``held``
    "cancelled",  # the daemon is shutting down; nothing undone
]
PhaseAction = Literal["start", "stop", "rollback"]
PhaseOutcome = Literal["ok", "failed", "stale", "cancelled"]


@dataclasses.dataclass(frozen=True)
class PhaseTiming:
    step: str
    action: PhaseAction
    started: float  # seconds after the run started
    seconds: float
    outcome: PhaseOutcome
    attempts: int = 1
    detail: str = ""

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class RunRecord:
    run_id: int
    kind: RunKind
    token: str  # repr of the gate token, for people
    started_mono: float
    started_wall: float
    outcome: RunOutcome = "running"
    seconds: float | None = None  # None while running
    phases: tuple[PhaseTiming, ...] = ()
    current: str | None = None  # the step running now
    error: str | None = None  # why it failed or went stale
    held: tuple[str, ...] = ()  # steps whose resource this node still holds afterwards

    @property
    def finished(self) -> bool:
        return self.outcome != "running"

    def phase_seconds(self) -> dict[str, float]:
        """Seconds per ``action:step``, for metrics (``clever_*_phase_seconds``)."""
        out: dict[str, float] = {}
        for p in self.phases:
            key = f"{p.action}:{p.step}"
            out[key] = out.get(key, 0.0) + p.seconds
        return out

    def to_json(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["phases"] = [p.to_json() for p in self.phases]
        d["held"] = list(self.held)
        return d


@dataclasses.dataclass(frozen=True)
class ResourceFailure:
    """A failure counted against a resource (per VM for VMs): input to fail counts."""

    resource: str  # step name: "drbd", "filesystem", "ip", "vms"
    vm: str | None
    action: Literal["start", "stop"]
    reason: str
    run_id: int
    at_mono: float
    at_wall: float

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


GroupFact = RunRecord | ResourceFailure
