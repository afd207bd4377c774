"""The daemon side of DRBD's fence-peer and unfence-peer handlers (DESIGN section 4.5).

DRBD freezes writes on a Primary that loses its replication link (fencing
``resource-and-stonith``) and runs ``clevervm fence-peer``, which asks this
service over the control socket and waits. The service does not decide
(INTEGRATION.md section 1, "one brain"): a waiting handler is the fact
``drbd.fence_peer_pending``; the policy answers with ``AnswerFencePeer(code)``
and the runtime calls :meth:`FencePeerService.answer`. The policy asks the
peer to outdate its disk (``outdate_request`` in its heartbeat), has the peer
fenced through the coordinator, and resumes frozen I/O (``ResumeIo``).

Independent guards, kept as defence in depth (a guard that disagrees with the
policy answers 1 and logs an error):
- only 1, 4 or 7 ever leave here; every other code becomes 1;
- 7 only with a fence record of the current loss episode on disk;
- 4 only with the peer's disk observed Outdated (or worse), in a peer report
  received after the handler asked, or in DRBD's own view of the peer;
- a handler whose freeze ended (DRBD Connected again: DRBD ignores its exit
  code) gets 1, and so does every request with a bad environment, and every
  one still waiting when the daemon stops.

Invariants:
- Requests are served in the control server's own tasks and never wait on
  the resource executor; they only wait for the policy's answer.
- ``handler_exit()`` turns a reply into DRBD's code and can only produce 1,
  4 or 7 (never 3, 5 or 6, which let DRBD resume I/O on a guess), and 7 only
  with a record.
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from . import logsetup
from .control import Caller, ControlError, Handler
from .drbd.model import ConnState, DiskState, DrbdFacts, Role

log = logsetup.get("daemon.fence_peer")

EXIT_BROKEN, EXIT_PEER_OUTDATED, EXIT_PEER_FENCED = 1, 4, 7


class Verdict(enum.StrEnum):
    PEER_OUTDATED = "peer_outdated"
    PEER_FENCED = "peer_fenced"
    REFUSED = "refused"
    UNFENCED = "unfenced"


def handler_exit(verb: str, reply: Any) -> int:
    """DRBD's exit code for a daemon reply. Only 1, 4, 7 (fence-peer) or 0, 1 (unfence-peer)."""
    if not isinstance(reply, dict):
        return 1
    verdict = reply.get("verdict")
    if verb == "fence-peer":
        if verdict == Verdict.PEER_OUTDATED:
            return 4
        record = reply.get("record")
        if verdict == Verdict.PEER_FENCED and isinstance(record, str) and record:
            return 7
        return 1
    if verb == "unfence-peer" and verdict == Verdict.UNFENCED:
        return 0
    return 1


def fencing_suspended(f: DrbdFacts) -> bool:
    """Writes frozen because of fencing. DRBD 8.4's /proc/drbd does not say why; then a
    disconnected Primary with resource-and-stonith and an unknown peer disk is taken as fencing."""
    if not f.known:
        return False
    if "fencing" in f.suspended:
        return True
    return ("unspecified" in f.suspended and f.role is Role.PRIMARY and f.connection is not ConnState.CONNECTED
            and f.peer_disk is DiskState.DUNKNOWN and f.settings is not None and f.settings.fencing == "resource-and-stonith")


def check_env(env: Mapping[str, str], resource: str, peer: str) -> str | None:
    """A problem with DRBD's handler environment, or None."""
    res = env.get("DRBD_RESOURCE")
    if not res:
        return "DRBD_RESOURCE is not set (not started by DRBD?)"
    if res != resource:
        return f"DRBD_RESOURCE is {res!r}, this cluster manages {resource!r}"
    names: set[str] = set()
    node_id = env.get("DRBD_PEER_NODE_ID")
    if node_id is not None:
        if not node_id.isascii() or not node_id.isdigit():
            return f"DRBD_PEER_NODE_ID is {node_id!r}"
        if f"DRBD_NODE_ID_{node_id}" in env:
            names.add(env[f"DRBD_NODE_ID_{node_id}"])
    for key in ("DRBD_PEER", "DRBD_PEERS"):
        if env.get(key):
            names.update(env[key].split())
    if node_id is None and not names:
        return "neither DRBD_PEER_NODE_ID nor DRBD_PEER is set"
    if names and names != {peer}:
        return f"DRBD names the peer {', '.join(sorted(names))}, the configured peer is {peer}"
    return None


class Evidence(Protocol):
    """What the guards read (the runtime implements it from its world view; no I/O)."""

    def fence_record_id(self) -> str | None:
        """The key of a fence record of the current loss episode that is on disk and still valid, or None."""

    def peer_disk_outdated(self, since: float) -> str | None:
        """How the peer's disk is known to be Outdated or worse (a peer report received after ``since``, or
        DRBD's view of the peer), or None."""

    def drbd_connected(self) -> bool:
        """DRBD is Connected to the peer right now."""


@dataclasses.dataclass
class _Request:
    asked_at: float
    who: str
    answer: asyncio.Future[tuple[Verdict, str, str | None]]


class FencePeerService:
    def __init__(self, resource: str, peer_name: str, evidence: Evidence, *, on_change: Callable[[], None] = lambda: None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.resource = resource
        self.peer_name = peer_name
        self.evidence = evidence
        self.on_change = on_change
        self.clock = clock
        self._waiting: list[_Request] = []
        self.answered: dict[str, int] = {}  # verdict -> count, for status and metrics
        self.guard_refusals = 0

    def handlers(self) -> dict[str, Handler]:
        return {"fence-peer": self._cmd_fence_peer, "unfence-peer": self._cmd_unfence_peer}

    @property
    def pending(self) -> bool:
        """A fence-peer handler waits for the policy's answer (the fact ``drbd.fence_peer_pending``)."""
        return bool(self._waiting)

    def status(self) -> dict[str, Any]:
        now = self.clock()
        return {"waiting": [{"who": r.who, "for_seconds": round(now - r.asked_at, 3)} for r in self._waiting],
                "answered": dict(self.answered), "guard_refusals": self.guard_refusals}

    # ------------------------------------------------------------------ the handlers

    async def _cmd_fence_peer(self, args: Mapping[str, Any], caller: Caller) -> Any:
        env = args.get("env")
        if not isinstance(env, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in env.items()):
            raise ControlError("fence-peer needs DRBD's environment as an object of strings", "bad_request")
        verdict, reason, record = await self.fence_peer(env, caller.describe())
        return {"verdict": verdict.value, "reason": reason, "record": record}

    async def _cmd_unfence_peer(self, args: Mapping[str, Any], caller: Caller) -> Any:
        env = args.get("env")
        if not isinstance(env, dict):
            raise ControlError("unfence-peer needs DRBD's environment", "bad_request")
        problem = check_env(env, self.resource, self.peer_name)
        if problem:
            log.error("unfence-peer refused: %s", problem)
            return {"verdict": Verdict.REFUSED.value, "reason": problem}
        log.info("DRBD unfence-peer: %s is UpToDate again", self.peer_name,
                 extra={"fields": {"CLEVER_REASON": "drbd_unfence_peer", "CLEVER_PEER": self.peer_name}})
        return {"verdict": Verdict.UNFENCED.value, "reason": "peer UpToDate again"}

    async def fence_peer(self, env: Mapping[str, str], who: str = "DRBD") -> tuple[Verdict, str, str | None]:
        problem = check_env(env, self.resource, self.peer_name)
        if problem:
            result: tuple[Verdict, str, str | None] = (Verdict.REFUSED, f"bad handler environment: {problem}", None)
        else:
            req = _Request(self.clock(), who, asyncio.get_running_loop().create_future())
            self._waiting.append(req)
            log.warning("DRBD fence-peer for %s (%s): waiting for the decision", self.peer_name, who,
                        extra={"fields": {"CLEVER_REASON": "drbd_fence_peer_waiting", "CLEVER_PEER": self.peer_name}})
            self.on_change()
            try:
                result = await req.answer
            finally:
                if req in self._waiting:
                    self._waiting.remove(req)
                    self.on_change()
        verdict, reason, _ = result
        self.answered[verdict.value] = self.answered.get(verdict.value, 0) + 1
        level = log.info if verdict is not Verdict.REFUSED else log.error
        level("DRBD fence-peer for %s (%s): %s: %s", self.peer_name, who, verdict.value, reason,
              extra={"fields": {"CLEVER_REASON": f"drbd_fence_peer_{verdict.value}", "CLEVER_PEER": self.peer_name}})
        return result

    # ------------------------------------------------------------------ the policy's answer

    def answer(self, code: int, why: str = "") -> int:
        """Hand the policy's ``AnswerFencePeer(code)`` to every waiting handler, through the guards.

        Returns the code actually given (1 when a guard disagreed)."""
        if not self._waiting:
            return code
        given = code
        record: str | None = None
        for req in list(self._waiting):
            verdict, reason, record, given = self._checked(code, req, why)
            self._waiting.remove(req)
            if not req.answer.done():
                req.answer.set_result((verdict, reason, record))
        self.on_change()
        return given

    def _checked(self, code: int, req: _Request, why: str) -> tuple[Verdict, str, str | None, int]:
        if code == EXIT_PEER_FENCED:
            record = self.evidence.fence_record_id()
            if record is not None:
                return Verdict.PEER_FENCED, f"{self.peer_name} fenced ({why or 'policy'}); record {record}", record, 7
            return self._refused("7 without a fence record of the current loss episode on disk")
        if code == EXIT_PEER_OUTDATED:
            how = self.evidence.peer_disk_outdated(req.asked_at)
            if how is not None:
                return Verdict.PEER_OUTDATED, f"{self.peer_name}'s disk is Outdated ({how})", None, 4
            return self._refused(f"4 without {self.peer_name}'s disk observed Outdated since the handler asked")
        if code != EXIT_BROKEN:
            return self._refused(f"exit code {code} is never given (only 1, 4 and 7)")
        return Verdict.REFUSED, why or "the peer could be neither outdated nor fenced yet", None, 1

    def _refused(self, what: str) -> tuple[Verdict, str, str | None, int]:
        self.guard_refusals += 1
        log.error("fence-peer guard: the policy answered %s; answering 1 instead (DRBD keeps I/O frozen)", what,
                  extra={"fields": {"CLEVER_REASON": "fence_peer_guard_refused", "CLEVER_PEER": self.peer_name}})
        return Verdict.REFUSED, f"guard: {what}", None, 1

    def drop_stale(self) -> None:
        """Answer 1 to handlers whose freeze is over (DRBD Connected again ignores their exit code)."""
        if self._waiting and self.evidence.drbd_connected():
            for req in list(self._waiting):
                self._waiting.remove(req)
                if not req.answer.done():
                    req.answer.set_result((Verdict.REFUSED, "DRBD is Connected again: this handler's freeze is over", None))
            self.on_change()

    def close(self) -> None:
        """The daemon stops: every waiting handler exits 1 (I/O stays frozen until a new daemon decides)."""
        for req in list(self._waiting):
            if not req.answer.done():
                req.answer.set_result((Verdict.REFUSED, "the daemon is stopping", None))
        self._waiting.clear()
