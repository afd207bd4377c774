"""The daemon side of DRBD's fence-peer and unfence-peer handlers (DESIGN section 4.5).

DRBD freezes writes on a Primary that loses its replication link (fencing
``resource-and-stonith``) and runs ``clevervm fence-peer``, which asks this
service over the control socket. The answer:

- the peer is still heard on another link: ask it to outdate its disk
  (it runs ``drbdadm outdate``, retried while DRBD there still sees us);
  acknowledged -> ``peer_outdated`` (handler exit 4);
- the peer is not heard: the fencing coordinator fences it; confirmed *and* a
  fence record for the current loss episode is on disk -> ``peer_fenced``
  (exit 7);
- anything else -> ``refused`` (exit 1): I/O stays frozen.

Only a node that is PRIMARY or PROMOTING under a valid gate may have its
peer fenced or outdated (in MAINTENANCE a Primary may still outdate a
reachable peer, S6). Later, when DRBD shows writes frozen for fencing, no
handler is running and a fence record or an outdate acknowledgement is in
hand, :meth:`FencePeerService.maybe_resume` runs ``drbdadm resume-io``.

Invariants:
- Requests are served in the control server's own tasks and never wait on
  the resource executor; the only waits are the peer's answer and the fence.
- The verdict names what happened; ``handler_exit()`` turns it into DRBD's
  code and can only produce 1, 4 or 7 (never 3, 5 or 6, which let DRBD
  resume I/O on a guess), and 7 only with a record.
- An outdate acknowledgement counts only for the freeze it was obtained in:
  once DRBD is seen Connected or not frozen, or runs the handler again,
  older acknowledgements lapse.

The dependencies are small Protocols (implemented by the heartbeat, the
fencing coordinator and the runtime): :class:`PeerLink`,
:class:`FenceCoordinator`, :class:`LocalState`, and :class:`DrbdControl`
(the DRBD adapter).
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
from .drbd import errors
from .drbd.adapter import OutdateResult
from .drbd.model import ConnState, DiskState, DrbdFacts, Role

log = logsetup.get("daemon.fence_peer")

ACTIVE_PHASES = frozenset({"PRIMARY", "PROMOTING"})


# --------------------------------------------------------------------------- what this service needs


@dataclasses.dataclass(frozen=True)
class HandlerGate:
    """What the runtime says about this node when a handler asks."""

    phase: str  # DESIGN 4.1 phase name: PRIMARY, PROMOTING, SECONDARY, FENCING, MAINTENANCE...
    gate_valid: bool  # the episode or grant token this node holds (or takes) resources under is still valid
    episode: str | None = None  # the current loss episode, for logs


class LocalState(Protocol):
    def handler_gate(self) -> HandlerGate:
        """The phase and gate right now (no I/O, no waiting)."""


class PeerUnreachable(Exception):
    """The peer stopped being heard before it answered."""


@dataclasses.dataclass(frozen=True)
class PeerOutdate:
    outdated: bool  # True: the peer's disk is now Outdated (or worse) and it acknowledged
    detail: str


class PeerLink(Protocol):
    """The heartbeat (issue 4)."""

    def peer_heard(self) -> bool:
        """A valid heartbeat from the peer arrived within ``heartbeat.timeout`` on any link."""

    async def request_outdate(self, resource: str) -> PeerOutdate:
        """Ask the peer daemon to outdate its disk (it retries while its DRBD is still connected).

        Returns the peer's answer; raises PeerUnreachable as soon as the peer is
        no longer heard. No deadline of its own beyond that (DRBD waits for us).
        """


class FenceOutcome(enum.Enum):
    CONFIRMED = "confirmed"  # positive evidence of OFF, record persisted (S2)
    FAILED = "failed"  # tried, not confirmed (the coordinator keeps retrying in the background)
    NOT_ALLOWED = "not allowed"  # a gate closed: gateway unreachable (S7), maintenance, cannot take over (S8)


@dataclasses.dataclass(frozen=True)
class FenceResult:
    outcome: FenceOutcome
    detail: str


class FenceCoordinator(Protocol):
    """The fencing coordinator (issue 7)."""

    async def fence_for_drbd(self, reason: str) -> FenceResult:
        """Join or start the fence of the peer for the current loss episode; return when this attempt ends."""

    def record_for_current_episode(self) -> str | None:
        """The id of a persisted fence record for the current loss episode, or None."""


class DrbdControl(Protocol):
    """The subset of :class:`~.drbd.adapter.DrbdAdapter` used here."""

    def facts(self) -> DrbdFacts: ...

    async def wait_change(self, timeout: float) -> DrbdFacts: ...

    async def resume_io(self) -> None: ...

    async def outdate(self, timeout: float) -> OutdateResult: ...


# --------------------------------------------------------------------------- verdicts


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


# --------------------------------------------------------------------------- the service


class FencePeerService:
    def __init__(self, resource: str, peer_name: str, *, local: LocalState, peer: PeerLink, fencer: FenceCoordinator,
                 drbd: DrbdControl, clock: Callable[[], float] = time.monotonic, success_grace: float = 5.0) -> None:
        self.resource = resource
        self.peer_name = peer_name
        self.local = local
        self.peer = peer
        self.fencer = fencer
        self.drbd = drbd
        self.clock = clock
        self.in_flight = 0
        self.outdate_ack: str | None = None
        self._ack_at = 0.0
        # The last time DRBD was seen not frozen for fencing (or Connected): an acknowledgement older
        # than that belongs to an earlier disconnection and proves nothing now.
        self._last_clear = clock()
        self.resumes = 0
        # After answering 4 or 7 the handler still has to exit and DRBD to act on it: DRBD 8.4 shows
        # no helper events, so for this long the daemon leaves the resume to DRBD.
        self.success_grace = success_grace
        self._drbd_acts_until = 0.0

    def handlers(self) -> dict[str, Handler]:
        return {"fence-peer": self._cmd_fence_peer, "unfence-peer": self._cmd_unfence_peer}

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
        self.outdate_ack = None
        return {"verdict": Verdict.UNFENCED.value, "reason": "peer UpToDate again"}

    async def fence_peer(self, env: Mapping[str, str], who: str = "DRBD") -> tuple[Verdict, str, str | None]:
        # DRBD runs the handler once per freeze: a new call means a freeze the older acknowledgement
        # may not belong to (the peer may have resynced to UpToDate in between, unseen by a poller).
        self.outdate_ack = None
        self.in_flight += 1
        try:
            verdict, reason, record = await self._decide(env)
        except Exception:  # a bug must end in "refused" (exit 1), never in a guess
            log.exception("fence-peer failed")
            verdict, reason, record = Verdict.REFUSED, "internal error; see the daemon's log", None
        finally:
            self.in_flight -= 1
        if verdict is not Verdict.REFUSED:
            self._drbd_acts_until = self.clock() + self.success_grace
        level = log.info if verdict is not Verdict.REFUSED else log.error
        level("DRBD fence-peer for %s (%s): %s: %s", self.peer_name, who, verdict.value, reason,
              extra={"fields": {"CLEVER_REASON": f"drbd_fence_peer_{verdict.value}", "CLEVER_PEER": self.peer_name}})
        return verdict, reason, record

    async def _decide(self, env: Mapping[str, str]) -> tuple[Verdict, str, str | None]:
        problem = check_env(env, self.resource, self.peer_name)
        if problem:
            return Verdict.REFUSED, f"bad handler environment: {problem}", None
        while True:
            gate = self.local.handler_gate()
            may_fence = gate.phase in ACTIVE_PHASES and gate.gate_valid
            facts = self.drbd.facts()
            may_outdate = may_fence or (gate.phase == "MAINTENANCE" and facts.known and facts.role is Role.PRIMARY)
            if not may_outdate:
                why = f"this node is {gate.phase}" + ("" if gate.gate_valid or gate.phase not in ACTIVE_PHASES else " with a stale gate")
                return Verdict.REFUSED, f"{why}: only the active node may have its peer outdated or fenced", None
            if self.peer.peer_heard():
                try:
                    answer = await self.peer.request_outdate(self.resource)
                except PeerUnreachable as e:
                    log.warning("the peer stopped answering during the outdate request (%s); deciding again", e)
                    await asyncio.sleep(0.05)
                    continue
                if answer.outdated:
                    self.outdate_ack = f"{self.peer_name} outdated its disk at {time.time():.3f}: {answer.detail}"
                    self._ack_at = self.clock()
                    return Verdict.PEER_OUTDATED, f"{self.peer_name} is heard on another link and outdated its disk ({answer.detail})", None
                return Verdict.REFUSED, f"{self.peer_name} did not outdate its disk: {answer.detail}", None
            if not may_fence:
                return Verdict.REFUSED, f"{self.peer_name} is not heard and this node is {gate.phase}: no fencing", None
            result = await self.fencer.fence_for_drbd(f"DRBD lost the replication link to {self.peer_name} and it is not heard")
            if result.outcome is not FenceOutcome.CONFIRMED:
                return Verdict.REFUSED, f"fence of {self.peer_name} {result.outcome.value}: {result.detail}", None
            record = self.fencer.record_for_current_episode()
            if not record:
                return Verdict.REFUSED, "the fence was reported confirmed but no record of the current episode exists", None
            return Verdict.PEER_FENCED, f"{self.peer_name} fenced: {result.detail}", record

    # ------------------------------------------------------------------ resuming frozen I/O

    async def maybe_resume(self) -> bool:
        """resume-io when frozen for fencing, no handler running, and a record or an outdate ack in hand."""
        f = self.drbd.facts()
        if f.known and (f.connection is ConnState.CONNECTED or not fencing_suspended(f)):
            self._last_clear = self.clock()
        if self.outdate_ack is not None and self._ack_at <= self._last_clear and f.known:
            self.outdate_ack = None
        if not fencing_suspended(f) or f.fence_peer_running or self.in_flight or self.clock() < self._drbd_acts_until:
            return False
        record = self.fencer.record_for_current_episode()
        evidence = f"fence record {record}" if record else self.outdate_ack
        if not evidence:
            return False
        await self.drbd.resume_io()
        self.resumes += 1
        log.warning("DRBD writes were frozen for fencing with no handler running; resumed them (%s)", evidence,
                    extra={"fields": {"CLEVER_REASON": "drbd_resume_io", "CLEVER_PEER": self.peer_name}})
        return True

    async def run(self, interval: float = 1.0) -> None:
        """Check on every DRBD change and at least every ``interval`` (cancel to stop)."""
        while True:
            await self.drbd.wait_change(interval)
            try:
                await self.maybe_resume()
            except errors.DrbdError as e:
                log.error("resume-io failed: %s", e)


class OutdateResponder:
    """The peer's side of "outdate your disk": what the heartbeat's request channel calls."""

    def __init__(self, resource: str, drbd: DrbdControl, timeout: float = 30.0) -> None:
        self.resource = resource
        self.drbd = drbd
        self.timeout = timeout

    async def handle(self, resource: str) -> PeerOutdate:
        if resource != self.resource:
            return PeerOutdate(False, f"unknown resource {resource!r}")
        f = self.drbd.facts()
        if f.known and f.role is Role.PRIMARY:
            return PeerOutdate(False, "this node is DRBD Primary: it will not outdate itself")
        try:
            result = await self.drbd.outdate(self.timeout)
        except errors.RefusedWhileConnected:
            return PeerOutdate(False, f"DRBD here still connected after {self.timeout:g} s")
        except errors.DrbdError as e:
            return PeerOutdate(False, str(e))
        log.warning("outdated the local DRBD disk at the peer's request (%s)", result.value,
                    extra={"fields": {"CLEVER_REASON": "drbd_outdated_on_request"}})
        return PeerOutdate(True, "disk Outdated" if result is OutdateResult.OUTDATED else "disk already Inconsistent")

