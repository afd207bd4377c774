"""The fencing coordinator: one verified fence of the peer at a time.

Sequence of one operation (DESIGN 4.4, 8):
  record on disk for this episode? -> confirmed at once, nothing else
  -> the delay decided by the policy (applied once, before the first device;
     the peer heard again cancels)
  -> a fresh gateway gate (S7: an isolated node does not shoot)
  -> levels in order; every device of a level must confirm OFF; before and
     during each device action the peer's heartbeat is checked (heard: the
     action is stopped, its process killed, and the fence cancelled) and the
     device's identity is checked (untrusted or mismatched: refused, no power
     action); failed attempts are retried with backoff inside the device's
     own budget
  -> all levels failed: back off, re-check the gate, try again (frozen meanwhile)
  -> a level confirmed: the fence record is appended and fsynced, and only then
     is anyone told "confirmed"; then, with ``after = "on"``, the peer is
     powered back on through the confirming level.

Invariants:
- S2: the only way to CONFIRMED is every device of one level returning
  CONFIRMED_OFF, or an operator's checked confirmation; both end in a record.
- A record is looked up by the whole episode and never serves another one.
- One operation per target: the daemon loop, the DRBD fence-peer handler and
  ``clevervm fence`` join it. A caller that stops waiting does not stop it.
- No device action outlives its operation: when an operation ends (operator,
  peer heard, ``cancel()``, superseded) its running agent call is cancelled
  and awaited, so a power-off not yet sent is never sent later.
- Nothing is reported confirmed before the record is on disk.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import enum
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from .agent import REQUIRED_OFF_READS, FenceAgent, error_text
from .identity import IdentityBook, IdentityVerdict, Trust, same_machine
from .journal import FenceJournal, FenceRecord
from .manual import ConfirmRefused, ManualAgent, OperatorConfirmation, check_confirmation
from .types import Deadline, Episode, FenceResult, Outcome, PowerOnResult, PowerState, now_wall

log = logging.getLogger("clever_cluster.fencing")

GATE_TIMEOUT = 10.0
HEARD_POLL = 0.1
DEVICE_RETRY_FIRST = 0.5
DEVICE_RETRY_MAX = 5.0


class Phase(enum.Enum):
    DELAY = "delay"
    GATE = "gate"
    FENCING = "fencing"
    BACKOFF = "backoff"
    RECORDING = "recording"
    DONE = "done"


@dataclasses.dataclass(frozen=True)
class FenceRequest:
    episode: Episode
    target_incarnation: int
    delay: float  # seconds, decided by the policy (priority + random delay); 0 for none
    reason: str
    requester: str  # "loop", "drbd fence-peer", "clevervm fence"
    # A fence the operator asked for goes on while the peer is heard
    # (`clevervm fence` of a hung node that still sends heartbeats).
    cancel_if_heard: bool = True


@dataclasses.dataclass(frozen=True)
class FenceReport:
    outcome: Outcome
    message: str
    record: FenceRecord | None = None
    results: tuple[FenceResult, ...] = ()

    @property
    def confirmed(self) -> bool:
        return self.outcome is Outcome.CONFIRMED_OFF and self.record is not None


@dataclasses.dataclass(frozen=True)
class FenceEvent:
    """Something a log line, a metric or an alert is made from."""

    kind: str  # stable code: fence_started, fence_cancelled, gate_closed, device_result, identity_refused,
    #            contradiction, level_failed, round_failed, fence_confirmed, power_on
    target: str
    message: str
    result: FenceResult | None = None
    alert: bool = False


@dataclasses.dataclass
class FenceStatus:
    """The facts about the current (or last) operation, for the loop and ``status``."""

    target: str
    episode: Episode
    requesters: list[str]
    phase: Phase
    started: float  # wall
    delay_until: float | None = None  # wall
    level: int | None = None
    device: str | None = None
    rounds: int = 0
    attempts: int = 0
    last_results: list[FenceResult] = dataclasses.field(default_factory=list)
    report: FenceReport | None = None
    power_on: list[PowerOnResult] = dataclasses.field(default_factory=list)


class _Cancelled(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class _Operation:
    def __init__(self, request: FenceRequest, status: FenceStatus) -> None:
        self.request = request
        self.status = status
        self.operator: asyncio.Future[OperatorConfirmation] = asyncio.get_running_loop().create_future()
        self.task: asyncio.Task[FenceReport] | None = None
        self.cancel_reason: str | None = None


class FenceCoordinator:
    """Fences one target (the peer) through ordered levels of devices."""

    def __init__(self, *, node: str, boot_id: str, own_machine_id: str, target: str, levels: Sequence[Sequence[FenceAgent]],
                 journal: FenceJournal, identity: IdentityBook,
                 gateway_gate: Callable[[], Awaitable[bool]], peer_heard: Callable[[], bool],
                 peer_machine_id: Callable[[], str | None],
                 after: str = "on", retry_backoff: float = 2.0, retry_backoff_max: float = 60.0,
                 device_attempts: int = 3, max_rounds: int | None = None,
                 on_event: Callable[[FenceEvent], None] | None = None) -> None:
        if not levels or any(not lvl for lvl in levels):
            raise ValueError("at least one level, each with at least one device")
        if after not in ("on", "off"):
            raise ValueError("after must be 'on' or 'off'")
        self.node, self.boot_id, self.own_machine_id, self.target = node, boot_id, own_machine_id, target
        self.levels = [list(lvl) for lvl in levels]
        self.journal, self.identity = journal, identity
        self._gate, self._heard, self._peer_mid = gateway_gate, peer_heard, peer_machine_id
        self.after, self.retry_backoff, self.retry_backoff_max = after, retry_backoff, retry_backoff_max
        self.device_attempts, self.max_rounds = device_attempts, max_rounds
        self._on_event = on_event
        self._op: _Operation | None = None
        self._last: FenceStatus | None = None
        self._background: set[asyncio.Task[None]] = set()

    # ------------------------------------------------------------ public

    async def fence(self, request: FenceRequest) -> FenceReport:
        """Fence the target for ``request.episode``, joining an operation in flight."""
        if request.episode.peer != self.target:
            raise ValueError(f"this coordinator fences {self.target}, not {request.episode.peer}")
        rec = self.journal.record_for(request.episode)
        if rec is not None:
            return FenceReport(Outcome.CONFIRMED_OFF, f"already fenced for this episode ({', '.join(rec.devices)})", rec)
        op = self._op
        if op is not None and (op.task is None or op.task.done()):
            op = None
        if op is not None and op.request.episode != request.episode:
            await self._supersede(op, f"superseded by episode {request.episode.key()}")
            op = self._op if self._op is not None and self._op.request.episode == request.episode else None
        if op is None:
            op = self._start(request)
        elif request.requester not in op.status.requesters:
            op.status.requesters.append(request.requester)
        assert op.task is not None
        # A caller that stops waiting (cancelled) leaves the operation running.
        return await asyncio.shield(op.task)

    def status(self) -> FenceStatus | None:
        """The operation in flight, else the last finished one."""
        return self._op.status if self._op is not None else self._last

    def record_for(self, episode: Episode) -> FenceRecord | None:
        return self.journal.record_for(episode)

    def cancel(self, reason: str) -> None:
        """Stop the operation in flight (e.g. the loss episode closed)."""
        op = self._op
        if op is not None and op.task is not None and not op.task.done():
            op.cancel_reason = reason
            op.task.cancel()

    async def confirm_fenced(self, episode: Episode, target_incarnation: int, typed_name: str, operator: str, *,
                             peer_heard: bool, drbd_connected: bool, accept_data_loss: bool = False) -> FenceRecord:
        """``clevervm confirm-fenced NODE``: record an operator's confirmation.

        Raises ConfirmRefused. With an operation in flight for this episode,
        it ends that operation confirmed (any device attempt is abandoned).
        ``accept_data_loss`` (DESIGN S3) is recorded in a record of its own,
        even when the episode already has one without it.
        """
        conf = check_confirmation(self.target, typed_name, operator, peer_heard=peer_heard, drbd_connected=drbd_connected)
        if episode.peer != self.target:
            raise ConfirmRefused(f"episode {episode.key()} is not a loss of {self.target}")
        existing = self.journal.record_for(episode)
        if existing is not None and (existing.accept_data_loss or not accept_data_loss):
            return existing
        if accept_data_loss:
            rec = dataclasses.replace(self._operator_record(episode, target_incarnation, conf, now_wall()), accept_data_loss=True)
            await asyncio.to_thread(self.journal.append, rec)
            self._emit("fence_confirmed", f"{self.target} confirmed off by operator {operator}, data loss accepted", alert=True)
            return rec
        op = self._op
        if op is not None and op.request.episode == episode and op.task is not None and not op.task.done():
            if not op.operator.done():
                op.operator.set_result(conf)
            report = await asyncio.shield(op.task)
            if report.record is not None:
                return report.record
            # The operation ended (gate, cancel) before it took the confirmation:
            # the confirmation stands on its own.
        rec = self._operator_record(episode, target_incarnation, conf, now_wall())
        await asyncio.to_thread(self.journal.append, rec)
        self._emit("fence_confirmed", f"{self.target} confirmed off by operator {operator}", alert=True)
        return rec

    async def peer_reads_off(self) -> bool:
        """Whether every device of some level reads the peer OFF right now.

        For the policy's "no delay when the peer's device already reports it
        off" (DESIGN 4.4). Read-only, trusted devices only, each read OFF on
        consecutive reads as for a confirmation; it is never fencing
        evidence: only a fence operation writes a record.
        """
        for level in self.levels:
            if any(isinstance(a, ManualAgent) or not self.identity.trusted(a.name, self._peer_mid()) for a in level):
                continue
            if all([await self._reads_off(a) for a in level]):
                return True
        return False

    @staticmethod
    async def _reads_off(agent: FenceAgent) -> bool:
        """OFF on REQUIRED_OFF_READS consecutive reads: one stray OFF must not drop the priority delay."""
        deadline = Deadline.after(min(agent.timeout, 10.0))
        for n in range(REQUIRED_OFF_READS):
            if n:
                await asyncio.sleep(min(agent.poll_interval, deadline.remaining()))
            try:
                r = await agent.status(deadline)
            except Exception as e:  # noqa: BLE001 - no reading is not OFF
                log.warning("status of %s failed: %s", agent.name, error_text(e))
                return False
            if r.outcome is not None or r.state is not PowerState.OFF:
                return False
        return True

    async def aclose(self) -> None:
        self.cancel("shutting down")
        for t in self._background:
            t.cancel()
        tasks: list[asyncio.Task[Any]] = [*self._background]
        if self._op is not None and self._op.task is not None:
            tasks.append(self._op.task)
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t

    # ------------------------------------------------------------ operation

    def _start(self, request: FenceRequest) -> _Operation:
        status = FenceStatus(self.target, request.episode, [request.requester], Phase.DELAY, now_wall())
        op = _Operation(request, status)
        self._op = op
        op.task = asyncio.create_task(self._run(op), name=f"fence-{self.target}")
        op.task.add_done_callback(lambda _t: self._finished(op))
        self._emit("fence_started", f"fencing {self.target} for episode {request.episode.key()}: {request.reason} "
                                    f"(asked by {request.requester}, delay {request.delay:.1f}s)")
        return op

    def _finished(self, op: _Operation) -> None:
        if self._op is op:
            self._op = None
        self._last = op.status

    async def _supersede(self, op: _Operation, reason: str) -> None:
        op.cancel_reason = reason
        assert op.task is not None
        op.task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await op.task

    async def _run(self, op: _Operation) -> FenceReport:
        try:
            report = await self._sequence(op)
        except _Cancelled as c:
            report = FenceReport(Outcome.CANCELLED, c.message, results=tuple(op.status.last_results))
        except asyncio.CancelledError:
            report = FenceReport(Outcome.CANCELLED, op.cancel_reason or "cancelled", results=tuple(op.status.last_results))
        op.status.report = report
        op.status.phase = Phase.DONE
        if report.outcome is Outcome.CANCELLED:
            self._emit("fence_cancelled", f"fence of {self.target} cancelled: {report.message}")
        return report

    def _check_heard(self, op: _Operation) -> None:
        if op.request.cancel_if_heard and self._heard():
            raise _Cancelled(f"{self.target} was heard again")

    async def _wait(self, op: _Operation, seconds: float) -> OperatorConfirmation | None:
        """Sleep ``seconds``, watching the peer's heartbeats and the operator."""
        deadline = Deadline.after(seconds)
        while True:
            self._check_heard(op)
            left = deadline.remaining()
            if left <= 0:
                return None
            with contextlib.suppress(TimeoutError):
                return await asyncio.wait_for(asyncio.shield(op.operator), timeout=min(HEARD_POLL, left))

    async def _sequence(self, op: _Operation) -> FenceReport:
        req, st = op.request, op.status
        if req.delay > 0:
            st.phase, st.delay_until = Phase.DELAY, now_wall() + req.delay
            conf = await self._wait(op, req.delay)
            if conf is not None:
                return await self._confirmed_by_operator(op, conf)
        backoff = self.retry_backoff
        while True:
            self._check_heard(op)
            st.phase = Phase.GATE
            if not await self._gate_open():
                self._emit("gate_closed", f"not fencing {self.target}: no gateway reachable from here; this node is probably the isolated one", alert=True)
                return FenceReport(Outcome.GATE_CLOSED, "gateway gate closed: this node is probably isolated", results=tuple(st.last_results))
            st.phase = Phase.FENCING
            outcome = await self._levels(op)
            if isinstance(outcome, FenceReport):
                return outcome
            st.rounds += 1
            self._emit("round_failed", f"no level could fence {self.target} (round {st.rounds}); retrying in {backoff:.1f}s", alert=True)
            if self.max_rounds is not None and st.rounds >= self.max_rounds:
                return FenceReport(Outcome.FAILED, f"no level confirmed {self.target} off after {st.rounds} rounds", results=tuple(st.last_results))
            st.phase = Phase.BACKOFF
            conf = await self._wait(op, backoff)
            if conf is not None:
                return await self._confirmed_by_operator(op, conf)
            backoff = min(backoff * 2, self.retry_backoff_max)

    async def _gate_open(self) -> bool:
        try:
            return bool(await asyncio.wait_for(self._gate(), timeout=GATE_TIMEOUT))
        except Exception as e:  # noqa: BLE001 - no data is a closed gate (S7)
            log.warning("gateway gate failed: %s", e)
            return False

    async def _levels(self, op: _Operation) -> FenceReport | None:
        st = op.status
        for li, level in enumerate(self.levels, 1):
            st.level = li
            if li > 1:
                # Level 1 may have taken its whole budget: the gate decided
                # before it is not fresh any more (S7).
                self._check_heard(op)
                if not await self._gate_open():
                    self._emit("gate_closed", f"not trying level {li} on {self.target}: no gateway reachable from here", alert=True)
                    return FenceReport(Outcome.GATE_CLOSED, f"gateway gate closed before level {li}: this node is probably isolated",
                                       results=tuple(st.last_results))
            results: list[FenceResult] = []
            for agent in level:
                st.device = agent.name
                self._check_heard(op)
                result = await self._device_off(op, agent)
                if isinstance(result, OperatorConfirmation):
                    return await self._confirmed_by_operator(op, result)
                results.append(result)
                st.last_results = [*st.last_results[-20:], result]
                self._emit("device_result", f"{agent.name}: {result.outcome.value}: {result.message}", result,
                           alert=result.outcome is Outcome.CONTRADICTION)
                if not result.confirmed:
                    break
            if results and len(results) == len(level) and all(r.confirmed for r in results):
                return await self._confirmed_by_devices(op, li, results)
            self._emit("level_failed", f"level {li} did not confirm {self.target} off")
        return None

    async def _device_off(self, op: _Operation, agent: FenceAgent) -> FenceResult | OperatorConfirmation:
        """One device: identity, then off() with retries inside its budget."""
        deadline = Deadline.after(agent.timeout)
        started = now_wall()
        refused = await self._identity_refusal(agent, deadline)
        if refused is not None:
            self._emit("identity_refused", f"{agent.name} refused: {refused}", alert=True)
            return agent.result("off", Outcome.REFUSED, [refused], started, attempts=0)
        pause = DEVICE_RETRY_FIRST
        attempt = 0
        while True:
            attempt += 1
            op.status.attempts += 1
            task = asyncio.create_task(agent.off(deadline), name=f"fence-{agent.name}-off")
            try:
                conf = await self._watch_device(op, task)
            finally:
                # However this operation ends (operator, peer heard, cancel()),
                # the device action ends with it: a power-off not yet sent is
                # never sent by an agent left running on its own.
                await _stop(task)
            if conf is not None:
                return conf
            try:
                r = task.result()
            except Exception as e:
                log.exception("fence agent %s raised", agent.name)
                r = agent.result("off", Outcome.FAILED, [f"agent error: {type(e).__name__}: {e}"], started)
            r = dataclasses.replace(r, attempts=attempt)
            if r.confirmed or r.outcome in (Outcome.CONTRADICTION, Outcome.REFUSED) or attempt >= self.device_attempts:
                return r
            if isinstance(agent, ManualAgent) or deadline.remaining() <= pause:
                return r
            conf = await self._wait(op, pause)
            if conf is not None:
                return conf
            pause = min(pause * 2, DEVICE_RETRY_MAX)

    async def _watch_device(self, op: _Operation, task: asyncio.Task[FenceResult]) -> OperatorConfirmation | None:
        """Wait for a device action; the operator's confirmation ends it, the peer heard again cancels it."""
        waiters: set[asyncio.Future[Any]] = {task, op.operator}
        while True:
            done, _ = await asyncio.wait(waiters, timeout=HEARD_POLL, return_when=asyncio.FIRST_COMPLETED)
            if task in done:
                return None
            if op.operator.done():
                return op.operator.result()
            self._check_heard(op)

    async def _identity_refusal(self, agent: FenceAgent, deadline: Deadline) -> str | None:
        """Why this device may not be used now, or None. Never a power action."""
        if isinstance(agent, ManualAgent):
            return None
        verdict = self.identity.verdict(agent.name)
        expected = self._peer_mid() or verdict.peer_machine_id
        if not self.identity.trusted(agent.name, self._peer_mid()):
            return f"not trusted ({verdict.trust.value}: {verdict.message})"
        assert expected is not None
        try:
            reported = await agent.machine_id(deadline.earliest(agent.timeout / 3))
        except Exception as e:  # noqa: BLE001 - a device that cannot say what it controls is not used; the next level is tried
            return f"cannot re-read the machine id before powering off: {error_text(e)}"
        if same_machine(reported, self.own_machine_id) or not same_machine(reported, expected):
            v = self.identity.record(IdentityVerdict(agent.name, Trust.MISMATCH,
                                                     f"now reports machine id {reported}; the peer's is {expected}", reported, expected, now_wall()))
            return f"identity mismatch: {v.message}; device disabled"
        return None

    # ------------------------------------------------------------ confirmation

    async def _persist(self, op: _Operation, rec: FenceRecord) -> FenceReport:
        op.status.phase = Phase.RECORDING
        # Shielded: once the evidence is in hand, cancelling the caller must not
        # leave a half-written record behind or skip it.
        try:
            await asyncio.shield(asyncio.to_thread(self.journal.append, rec))
        except OSError as e:
            # The evidence is in hand but not on disk: that is not a confirmed
            # fence (S1 needs the record). The next request fences again.
            msg = f"{self.target} read OFF but the fence record could not be written ({e.strerror or e}): not confirmed"
            self._emit("record_failed", msg, alert=True)
            return FenceReport(Outcome.FAILED, msg, results=tuple(op.status.last_results))
        report = FenceReport(Outcome.CONFIRMED_OFF, f"{self.target} confirmed off: {'; '.join(rec.evidence[-len(rec.devices):])}", rec,
                             tuple(op.status.last_results))
        self._emit("fence_confirmed", report.message)
        return report

    async def _confirmed_by_devices(self, op: _Operation, level: int, results: list[FenceResult]) -> FenceReport:
        req = op.request
        rec = FenceRecord(episode=req.episode, target=self.target, target_incarnation=req.target_incarnation, kind="device",
                          level=level, devices=tuple(r.device for r in results),
                          evidence=tuple(f"{r.device}: {e}" for r in results for e in r.evidence),
                          started=op.status.started, confirmed=max(r.finished for r in results),
                          local_node=self.node, local_boot_id=self.boot_id)
        report = await self._persist(op, rec)
        if report.confirmed and self.after == "on":
            t = asyncio.create_task(self._power_on(op, self.levels[level - 1]))
            self._background.add(t)
            t.add_done_callback(self._background.discard)
        return report

    def _operator_record(self, episode: Episode, incarnation: int, conf: OperatorConfirmation, started: float) -> FenceRecord:
        return FenceRecord(episode=episode, target=self.target, target_incarnation=incarnation, kind="operator", level=None,
                           devices=("operator",), evidence=(conf.evidence(),), started=started, confirmed=conf.at,
                           local_node=self.node, local_boot_id=self.boot_id, operator=conf.operator)

    async def _confirmed_by_operator(self, op: _Operation, conf: OperatorConfirmation) -> FenceReport:
        rec = self._operator_record(op.request.episode, op.request.target_incarnation, conf, op.status.started)
        return await self._persist(op, rec)

    async def _power_on(self, op: _Operation, level: list[FenceAgent]) -> None:
        for agent in level:
            if not agent.can_power_on:
                continue
            r = await agent.on(Deadline.after(agent.timeout))
            op.status.power_on.append(r)
            self._emit("power_on", f"{agent.name}: powering {self.target} back on {'done' if r.ok else 'failed'}: {r.evidence[-1] if r.evidence else ''}",
                       alert=not r.ok)

    def _emit(self, kind: str, message: str, result: FenceResult | None = None, alert: bool = False) -> None:
        level = logging.WARNING if alert else logging.INFO
        log.log(level, message, extra={"fields": {"CLEVER_REASON": kind, "CLEVER_PEER": self.target}})
        if self._on_event is not None:
            try:
                self._on_event(FenceEvent(kind, self.target, message, result, alert))
            except Exception:
                log.exception("fence event observer failed")


async def _stop(task: asyncio.Task[Any]) -> None:
    """Cancel ``task`` if it still runs and wait until it has really ended."""
    if not task.done():
        task.cancel()
        await asyncio.wait({task})
    if not task.cancelled():
        task.exception()  # retrieved here; the caller reads the result when it wants it
