"""Carries out the policy's actions as tracked tasks; their progress comes back as facts.

docs/policy.md's action table is the contract. Per action:

- ``Promote``/``Demote``/``StartVm``/``StopVm`` -> the resource group (start
  or stop request); one sequence at a time, and none while an operator
  command holds the group: a repeat of what runs, or an action while the
  group is busy, is ignored (the policy repeats it). The group re-validates
  the gate before each step through the runtime's gate check
  (``policy.gate_valid`` on freshly built facts). Progress: ``sequence`` and
  ``last_result`` in the world.
- ``FencePeer`` -> the fencing coordinator for that episode (one round; the
  policy decides the retries and their backoff); ``fencing.attempt`` and the
  failure count of the episode.
- ``ProbeGateway`` -> ``gateway.fresh_probe``; ``gateway.fresh``.
- ``DisconnectDrbd``/``ReconnectDrbd``/``ResumeIo``/``OutdateLocalDisk`` ->
  the DRBD adapter, at most one of each kind in flight and at most one per
  ``DRBD_REPEAT`` seconds (the policy repeats them until they show).
- ``AnswerFencePeer`` -> the fence-peer service (its guards apply).
- ``Publish`` -> what the heartbeat reports from now on.
- ``Alert`` -> the alert hooks and one journal entry.
- ``SelfFence`` -> the watchdog stops being fed.
- ``WaitUntil`` -> the time the loop wakes up at the latest.

Invariants:
- Nothing here blocks the loop: every action that does I/O is a task with a
  deadline (DRBD commands and probes here; sequences by the group's step
  budgets; fencing by the devices' budgets).
- A task that fails reports the failure as a fact and logs it; it never
  raises into the loop.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Protocol

from clever_cluster import policy as P
from clever_cluster.fencing.coordinator import FenceCoordinator, FenceReport, FenceRequest

from . import logsetup
from .alerts import AlertDispatcher
from .drbd import errors as drbd_errors
from .drbd.adapter import DrbdAdapter
from .fence_peer import FencePeerService
from .gateway import GatewayError, GatewayPinger
from .history import History
from .mapping import episode_to_fencing, image_to_resources
from .resources.assembly import ResourceGroup
from .resources.base import ImageToken as ResImageToken
from .resources.base import StartRequest, StopRequest, Takeover
from .resources.facts import RunRecord
from .world import World

log = logsetup.get("daemon.executor")

DRBD_REPEAT = 1.0
DRBD_DEADLINE_SLACK = 5.0
PROBE_DEADLINE = 30.0


class Parts(Protocol):
    """What the executor drives (the runtime holds them; fencing may be rebuilt by a reload)."""

    @property
    def node(self) -> str: ...

    @property
    def peer(self) -> str: ...

    world: World
    group: ResourceGroup
    drbd: DrbdAdapter
    pinger: GatewayPinger
    fence_peer: FencePeerService
    alerts: AlertDispatcher
    history: History

    @property
    def coordinator(self) -> FenceCoordinator | None:
        """None while a reload swaps the coordinator (no new fence starts then)."""

    def self_fence(self, reason: str) -> None: ...

    def send_heartbeat(self) -> None: ...

    async def observe_now(self) -> None:
        """Observe the VMs, the mount and the address afresh (bounded), so the decision after a
        sequence sees what it did rather than the state before it."""

    def sequence_done(self, rec: RunRecord | None) -> None:
        """After a sequence: observe the images again, and whatever else a sequence changed."""


class ForcibleDrbd:
    """The DRBD adapter as the group's ``DrbdControl``, with ``--force`` for one promotion the operator allowed."""

    def __init__(self, adapter: DrbdAdapter) -> None:
        self.adapter = adapter
        self.force_next = False

    async def promote(self) -> None:
        force, self.force_next = self.force_next, False
        await self.adapter.promote(force=force)

    async def demote(self) -> None:
        await self.adapter.demote()

    async def role(self) -> str:
        return (await self.adapter.role()).value


class Executor:
    def __init__(self, parts: Parts, forcible: ForcibleDrbd, *, clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time, on_fence: Callable[[str, float], None] | None = None) -> None:
        self.p = parts
        self.forcible = forcible
        self.clock, self.wall = clock, wall
        self.on_fence = on_fence or (lambda result, seconds: None)  # (fencing Outcome value or internal_error, seconds): metrics
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._last_drbd: dict[str, float] = {}
        self._forcestops = 0
        self.self_fenced: str | None = None

    # ------------------------------------------------------------------ entry point

    def carry_out(self, decision: P.Decision, facts: P.Facts) -> float | None:
        """Start what the decision asks; returns the latest time the loop should wake (WaitUntil)."""
        wake: float | None = None
        starts: list[P.StartVm] = []
        stops: list[P.StopVm] = []
        code = decision.reason.code.value
        for a in decision.actions:
            match a:
                case P.WaitUntil(at):
                    wake = at if wake is None else min(wake, at)
                case P.Publish(ann):
                    if ann != self.p.world.announcement:
                        self.p.world.announcement = ann
                        self.p.send_heartbeat()
                case P.Alert(kind, sentence):
                    self._alert(kind, code, sentence)
                case P.AnswerFencePeer(exit_code):
                    self.p.fence_peer.answer(exit_code, decision.reason.sentence)
                case P.ProbeGateway():
                    self._spawn("probe", self._probe())
                case P.FencePeer():
                    self._fence(a)
                case P.Promote():
                    self._promote(a, facts, decision)
                case P.Demote():
                    self._demote(a, facts)
                case P.StartVm():
                    starts.append(a)
                case P.StopVm():
                    stops.append(a)
                case P.DisconnectDrbd():
                    self._drbd("disconnect", self.p.drbd.disconnect)
                case P.ReconnectDrbd():
                    self._drbd("connect", self.p.drbd.connect)
                case P.ResumeIo(evidence):
                    self._drbd("resume-io", self.p.drbd.resume_io, f" ({evidence})")
                case P.OutdateLocalDisk():
                    self._drbd("outdate", self._outdate)
                case P.SelfFence(reason):
                    self.self_fenced = reason
                    self.p.self_fence(reason)
        if starts:
            self._start_vms(starts, facts, decision)
        if stops:
            self._stop_vms(stops, facts, decision)
        return wake

    # ------------------------------------------------------------------ tasks

    def _spawn(self, key: str, coro: Coroutine[Any, Any, None]) -> bool:
        t = self._tasks.get(key)
        if t is not None and not t.done():
            coro.close()
            return False
        task = asyncio.create_task(self._guarded(key, coro), name=f"action {key}")
        self._tasks[key] = task
        return True

    @staticmethod
    async def _guarded(key: str, coro: Coroutine[Any, Any, None]) -> None:
        try:
            await coro
        except asyncio.CancelledError:
            raise
        except Exception:  # a bug: logged; the fact it should have produced stays as it was
            log.exception("action %s failed with an internal error", key)

    def running(self, key: str) -> bool:
        t = self._tasks.get(key)
        return t is not None and not t.done()

    async def close(self) -> None:
        """Cancel the tracked tasks (a sequence in flight is left where it is: the group does not undo a cancelled run)."""
        for t in self._tasks.values():
            t.cancel()
        await asyncio.gather(*self._tasks.values(), return_exceptions=True)

    # ------------------------------------------------------------------ alerts

    def _alert(self, kind: str, code: str, sentence: str) -> None:
        self.p.alerts.raise_alert(kind, code, sentence, self.wall())
        log.warning("alert %s: %s", kind, sentence, extra={"fields": {"CLEVER_ALERT": kind, "CLEVER_REASON": code, "CLEVER_PEER": self.p.peer}})

    # ------------------------------------------------------------------ gateway

    async def _probe(self) -> None:
        try:
            async with asyncio.timeout(PROBE_DEADLINE):
                p = await self.p.pinger.fresh_probe()
            fresh = P.FreshProbe(p.finished_at, p.reachable)
        except (GatewayError, TimeoutError) as e:
            log.error("fresh gateway probe failed: %s; the fence gate counts it as unreachable", e or "timeout")
            fresh = P.FreshProbe(self.clock(), None)
        self.p.world.on_fresh_probe(fresh)

    # ------------------------------------------------------------------ fencing

    def _fence(self, a: P.FencePeer) -> None:
        coord = self.p.coordinator
        if coord is None:
            log.warning("not starting a fence: the fencing configuration is being reloaded")
            return
        if self.running("fence"):
            return
        self._spawn("fence", self._run_fence(coord, a))

    async def _run_fence(self, coord: FenceCoordinator, a: P.FencePeer) -> None:
        w, ep = self.p.world, a.episode
        now = self.clock()
        w.attempt = P.FenceAttempt(ep, now, True)
        w.touch()
        self.p.history.mark("fence_started", now, self.wall(), f"{'operator request' if a.operator else 'policy'}; waited {a.delay_waited:.2f}s")
        req = FenceRequest(episode_to_fencing(ep), ep.peer_incarnation or 0, 0.0,
                           f"{self.p.peer} lost ({ep}); decided after {a.delay_waited:.2f}s", "clevervm fence" if a.operator else "loop")
        report: FenceReport | None = None
        detail = ""
        try:
            report = await coord.fence(req)
            detail = report.message
        except Exception as e:
            log.exception("fence of %s failed with an internal error", self.p.peer)
            detail = f"internal error: {e!r}"
        end = self.clock()
        self.on_fence(report.outcome.value if report is not None else "internal_error", end - now)
        confirmed = report is not None and report.confirmed
        w.attempt = P.FenceAttempt(ep, now, False, end, "" if confirmed else detail)
        if confirmed:
            self.p.history.mark("fence_confirmed", end, self.wall(), detail)
        else:
            w.failures[ep] = w.failures.get(ep, 0) + 1
        w.touch()

    # ------------------------------------------------------------------ resources

    def _group_free(self) -> bool:
        return not self.running("sequence") and not self.p.group.executor.busy

    def _run_sequence(self, kind: P.SequenceKind, gate: str, work: Callable[[], Awaitable[RunRecord]], mark: str | None = None) -> None:
        if not self._group_free():
            return
        w = self.p.world
        now = self.clock()
        w.sequence = P.Sequence(kind, gate, now)
        w.touch()
        if mark is not None:
            self.p.history.mark(mark, now, self.wall(), gate)

        async def run() -> None:
            rec: RunRecord | None = None
            ok, detail = False, ""
            try:
                rec = await work()
                ok, detail = rec.outcome == "succeeded", rec.error or ""
            except Exception as e:
                log.exception("%s sequence under %s raised", kind.value, gate)
                detail = f"internal error: {e!r}"
            finally:
                await self.p.observe_now()
                w.sequence = None
                w.last_result = P.SequenceResult(kind, gate, ok, self.clock(), detail)
                if rec is not None:
                    self.p.history.run(rec)
                self.p.sequence_done(rec)
                w.touch()

        self._spawn("sequence", run())

    def _promote(self, a: P.Promote, facts: P.Facts, decision: P.Decision) -> None:
        kind, _, _ = a.gate.partition(":")
        handover = next((p.restore for p in a.vms if p.restore is not None and p.restore.kind is P.ImageKind.HANDOVER), None)
        forcestop = any(p.restore is not None and p.restore.kind is P.ImageKind.FORCESTOP for p in a.vms)
        takeover: Takeover
        image: ResImageToken | None = None
        if kind == "grant" and handover is not None:
            takeover, image = "handover", image_to_resources(handover)
        elif kind == "grant":
            takeover = "cold_start"
        elif kind == "episode":
            takeover = "failover"
        else:
            takeover = "restart"
        req = StartRequest(token=a.gate, takeover=takeover, image=image,
                           data_uuid=facts.drbd.data_uuid if forcestop and facts.drbd.data_uuid else None,
                           vms=frozenset(p.name for p in a.vms))
        if not self._group_free():
            return
        self.forcible.force_next = a.force

        async def work() -> RunRecord:
            try:
                return await self.p.group.executor.start(req)
            finally:
                self.forcible.force_next = False

        self._run_sequence(P.SequenceKind.PROMOTE, a.gate, work, "promote_started")

    def _demote(self, a: P.Demote, facts: P.Facts) -> None:
        image = None
        if a.mode is P.DemoteMode.SAVE and a.grant is not None:
            g = a.grant
            image = ResImageToken(origin="handover", id=g.grant_id, epoch=f"{g.epoch.counter}:{g.epoch.node}",
                                  data_uuid=facts.drbd.data_uuid or "?")
        mode = {P.DemoteMode.SAVE: "save", P.DemoteMode.STOP: "shutdown", P.DemoteMode.STOP_NOW: "destroy"}[a.mode]
        if a.mode is P.DemoteMode.SAVE and image is None:
            mode = "shutdown"
        req = StopRequest(token=a.gate, mode=mode, image=image)  # type: ignore[arg-type]
        if self._group_free():
            self._mark_stopping(facts)
        self._run_sequence(P.SequenceKind.DEMOTE, a.gate, lambda: self.p.group.executor.stop(req), "demote_started")

    def _mark_stopping(self, facts: P.Facts, names: set[str] | None = None) -> None:
        for vm in facts.resources.vms:
            if names is None or vm.name in names:
                self.p.world.stopped_by_cluster.add(vm.name)

    def _start_vms(self, starts: list[P.StartVm], facts: P.Facts, decision: P.Decision) -> None:
        gate = starts[0].gate
        forcestop = any(s.plan.restore is not None and s.plan.restore.kind is P.ImageKind.FORCESTOP for s in starts)
        for s in starts:
            if s.count_failure:
                self.p.world.on_crash(s.plan.name)
        req = StartRequest(token=gate, takeover="restart", data_uuid=facts.drbd.data_uuid if forcestop and facts.drbd.data_uuid else None,
                           vms=frozenset(s.plan.name for s in starts))
        self._run_sequence(P.SequenceKind.VM, gate, lambda: self.p.group.executor.start(req))

    def _stop_vms(self, stops: list[P.StopVm], facts: P.Facts, decision: P.Decision) -> None:
        gate = stops[0].gate
        save = any(s.save for s in stops)
        image = None
        if save:
            self._forcestops += 1
            e = decision.state.durable.epoch
            image = ResImageToken(origin="forcestop", id=f"forcestop-{int(self.wall())}-{self._forcestops}",
                                  epoch=f"{e.counter}:{e.node}", data_uuid=facts.drbd.data_uuid or "?")
        req = StopRequest(token=gate, mode="save" if image is not None else "shutdown", image=image, until="vms")
        if self._group_free():
            self._mark_stopping(facts, {s.name for s in stops})
        self._run_sequence(P.SequenceKind.VM, gate, lambda: self.p.group.executor.stop(req))

    # ------------------------------------------------------------------ DRBD

    def _drbd(self, what: str, fn: Callable[[], Awaitable[Any]], detail: str = "") -> None:
        now = self.clock()
        if self.running(f"drbd {what}") or now - self._last_drbd.get(what, float("-inf")) < DRBD_REPEAT:
            return
        self._last_drbd[what] = now
        deadline = self.p.drbd.cfg.command_timeout + DRBD_DEADLINE_SLACK

        async def run() -> None:
            try:
                async with asyncio.timeout(deadline):
                    await fn()
                log.info("drbdadm %s %s done%s", what, self.p.drbd.cfg.resource, detail,
                         extra={"fields": {"CLEVER_ACTION": f"drbd_{what.replace('-', '_')}"}})
            except drbd_errors.RefusedWhileConnected:
                log.debug("drbdadm %s refused while Connected (expected; repeated)", what)
            except (drbd_errors.DrbdError, TimeoutError) as e:
                log.warning("drbdadm %s %s failed: %s", what, self.p.drbd.cfg.resource, e or "timeout")
            finally:
                self.p.world.touch()

        self._spawn(f"drbd {what}", run())

    async def _outdate(self) -> None:
        await self.p.drbd.outdate(0.0)


def sequence_json(s: P.Sequence | None) -> dict[str, Any] | None:
    return None if s is None else {**dataclasses.asdict(s), "kind": s.kind.value}
