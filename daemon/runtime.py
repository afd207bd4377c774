"""The daemon's runtime: builds the parts, runs the decision loop, stops cleanly, reloads.

Start (``run``): the new incarnation is on disk first (heartbeat), then the
persisted policy state, fail counts, admin intent and fence records are
loaded; the observers start (DRBD, gateway, libvirt, mount and address,
images, fence devices) and the control socket opens; READY is sent; the
decision loop runs. Nothing is decided before DRBD, the VMs, the mount and
the address were each observed once (or ``STARTUP_GRACE`` passed), so a
restarted daemon adopts what runs instead of restarting it: the policy sees
what is held and completes or keeps it.

Stop: the first SIGTERM sets ``facts.local.shutting_down``; the loop keeps
deciding until the policy says ``ready_to_stop`` (handed over, or nothing
held), then the heartbeat announces ``leaving`` and the parts are released
in reverse order. ``clevervm daemon-restart`` and a second SIGTERM stop at
once (announcing ``restarting`` / ``leaving``), resources kept as they are.

Reload (SIGHUP, ``clevervm reload``): the file is validated first and the
old configuration kept on any error; identity, sockets and resource
settings need a restart (refused with the reason); heartbeat timings and
keys, gateway, policy, alerts and logging apply at once; fencing is rebuilt
after the operation in flight ended, the old coordinator closed before the
new one exists (both share one fence journal), so two coordinators never
fence.

Invariants: the parts are wired only here; the control commands live in
``commands.py``, the status document in ``status.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from clever_cluster import policy as P
from clever_cluster.fencing.agent import FenceAgent
from clever_cluster.fencing.coordinator import FenceCoordinator
from clever_cluster.fencing.coordinator import Phase as FencePhase
from clever_cluster.fencing.identity import IdentityBook
from clever_cluster.fencing.journal import FenceJournal, FenceRecord
from clever_cluster.fencing.monitor import DeviceMonitor
from clever_cluster.fencing.watchdog import SelfFenceGuard, WatchdogRefused
from clever_cluster.policy.view import record_for

from . import config as config_mod
from . import logsetup
from .alerts import AlertDispatcher
from .control import ControlServer, socket_path
from .drbd.adapter import DrbdAdapter
from .drbd.model import ConnState
from .executor import Executor, ForcibleDrbd
from .fence_peer import FencePeerService
from .fencing_setup import build_levels, build_monitor, build_watchdog, identity_book
from .gateway import GatewayPinger
from .heartbeat import PROTOCOL_VERSION, Announce, HeartbeatError, HeartbeatService, NodeReport
from .heartbeat.facts import HEARD, PeerState
from .heartbeat.keys import KeyProblem
from .history import History
from .intentcopy import IntentCopy
from .loop import DecisionLoop
from .mapping import LocalIdentity, Snapshot, build_facts, episode_to_fencing, node_report
from .metrics import Instruments
from .metrics_http import Endpoint, StatusCollector, StatusSource
from .notify import Notifier
from .observe import ImageScanner, MountIpPoller, PeerOffWatcher
from .resources import assembly
from .resources.facts import GroupFact, ResourceFailure, RunRecord
from .resources.saveimage import ImageStore
from .statefiles import DurableStore, FailCounts, StateError
from .status import document
from .world import World

log = logsetup.get("daemon.runtime")

VERSION = "0.2.0"
SHUTDOWN_PHASE_TIMEOUT = 10.0
OBSERVE_AFTER_SEQUENCE = 5.0
STARTUP_GRACE = 60.0  # decide with what is known after this long even if an observer never answered
EXIT_RESTART = 75  # the unit has RestartForceExitStatus=75: systemd starts the daemon again
# Changing these needs a restart of the running daemon (beyond config.RESTART_ONLY): the resource
# steps, DRBD adapter, watchdog and metrics endpoint are built once.
RESTART_SECTIONS = ("drbd", "filesystem", "ip", "vms", "watchdog", "metrics")
OUTDATED_OR_WORSE = ("Outdated", "Inconsistent", "Diskless", "Failed")


class Runtime:
    def __init__(self, config_path: Path, cfg: config_mod.Config, notifier: Notifier | None = None, *,
                 max_protocol: int = PROTOCOL_VERSION) -> None:
        self.config_path = Path(config_path).resolve()
        self.cfg = cfg
        self.max_protocol = max_protocol  # below PROTOCOL_VERSION only to act as the previous release (rolling-upgrade tests)
        self.notifier = notifier or Notifier()
        self.started_mono = time.monotonic()
        self.started_wall = time.time()
        self.settings = settings_of(cfg)
        self.reloads_ok = 0
        self.reloads_failed = 0
        self.last_reload_error: list[str] = []
        self.announce = Announce(kind="leaving")
        self.stop_requests = 0
        self._stop_now = asyncio.Event()
        self._shutdown: asyncio.Event | None = None
        self._tasks: list[asyncio.Task[Any]] = []
        self._report = NodeReport(phase="STARTING")
        self._snap: Snapshot | None = None
        self.deciding = False
        self.coordinator_: FenceCoordinator | None = None
        self._fencing_swap: asyncio.Task[None] | None = None
        self._monitor_task: asyncio.Future[Any] | None = None
        self._intent_seen: tuple[int, str] = (-1, "")
        self.watchdog_problem: str | None = None

    # ------------------------------------------------------------------ the parts the executor and commands use

    @property
    def node(self) -> str:
        return self.cfg.cluster.node

    @property
    def peer(self) -> str:
        return self.cfg.cluster.peer

    @property
    def tick(self) -> float:
        return self.cfg.policy.tick

    @property
    def coordinator(self) -> FenceCoordinator | None:
        return None if self._fencing_swap is not None and not self._fencing_swap.done() else self.coordinator_

    def send_heartbeat(self) -> None:
        self._report = self._build_report()
        self.heartbeat.send_now()

    def self_fence(self, reason: str) -> None:
        if self.watchdog is None or not self.watchdog.armed:
            log.critical("self-fence requested (%s) but no hardware watchdog is armed: this node keeps running; "
                         "the peer must fence it", reason, extra={"fields": {"CLEVER_REASON": "self_fence_impossible"}})
        else:
            log.critical("self-fence: %s; the watchdog is no longer fed and resets this node within %ss", reason,
                         self.watchdog.actual_timeout, extra={"fields": {"CLEVER_REASON": "self_fence"}})

    async def observe_now(self) -> None:
        with contextlib.suppress(Exception):  # an observer that fails here reports itself; the loop goes on
            async with asyncio.timeout(OBSERVE_AFTER_SEQUENCE):
                await asyncio.gather(self.group.monitor.refresh(), self.poller.observe())

    def sequence_done(self, rec: RunRecord | None) -> None:
        self.poller.kick()
        self.images.kick()
        if rec is not None and rec.kind == "start" and rec.outcome == "succeeded":
            self._spawn(self.intent_copy.after_mount(), "intent copy after mount")

    # ------------------------------------------------------------------ world -> facts

    def identity(self) -> LocalIdentity:
        ident = self.heartbeat.session.ident
        return LocalIdentity(self.node, ident.incarnation, ident.boot_id, ident.machine_id or "",
                             config_mod.safety_fingerprint(self.cfg))

    def snapshot(self, *, stalled: bool = False, draw: float = 0.0) -> Snapshot:
        now, wall = time.monotonic(), time.time()
        view = self.heartbeat.view()
        w = self.world
        w.note_bad_mac(view.drops.get("bad_mac", 0), now)
        ep = self.loop.state.durable.episode
        snap = Snapshot(
            now=now, wall=wall, local=self.identity(), peer_name=self.peer, peer=view,
            unauthenticated=w.unauthenticated(now, self.cfg.heartbeat.timeout), gateway=self.pinger.facts(), fresh=w.fresh,
            drbd=w.drbd, connected_since=w.connected_since, fence_peer_pending=self.fence_peer.pending,
            mounted=bool(w.mounted), ip=bool(w.ip), vms=w.vms, images=dict(w.images),
            stopped_by_cluster=frozenset(w.stopped_by_cluster), records=tuple(self.journal.records()),
            attempt=w.attempt, failures=w.failures.get(ep, 0) if ep is not None else 0, peer_reported_off=w.peer_reported_off,
            fail_counts=self.failcounts.as_tuples(), intent=view.intent, sequence=w.sequence, last_result=w.last_result,
            shutting_down=w.shutting_down, stalled=stalled, random_draw=draw,
        )
        self._snap = snap
        return snap

    def facts_now(self) -> P.Facts:
        return build_facts(self.snapshot())

    def gate_check(self, token: object) -> str | None:
        """The resource group's per-step check: ``policy.gate_valid`` on freshly built facts."""
        facts = self.facts_now()
        if P.gate_valid(self.loop.state, facts, self.settings, str(token)):
            return None
        return (f"gate {token} is no longer valid ({self.peer} {P.peer_status(facts, self.settings)}, DRBD "
                f"{facts.drbd.role}/{facts.drbd.connection}, peer role {facts.drbd.peer_role})")

    def _build_report(self) -> NodeReport:
        s = self._snap
        if s is None:
            return NodeReport(phase="STARTING")
        ann = self.world.announcement if self.deciding else None
        latest = next((r for r in reversed(self.journal.records()) if r.target == self.peer), None)
        fence_running = self.executor.running("fence")
        return node_report(ann, s, dict(ann.fail_counts) if ann is not None else {}, latest,
                           self.loop.state.durable.episode, fence_running)

    def report(self) -> NodeReport:
        return self._report

    def after_cycle(self, decision: P.Decision, facts: P.Facts) -> None:
        self._report = self._build_report()
        self.fence_peer.drop_stale()
        self.peer_off.peer_lost(P.peer_status(facts, self.settings) is P.PeerStatus.LOST)
        rec = self.heartbeat.view().intent
        if (rec.version, rec.origin) != self._intent_seen:
            self._intent_seen = (rec.version, rec.origin)
            self._apply_cleanups(rec.cleanups)
            self._spawn(self.intent_copy.write(rec), "intent copy")

    # ------------------------------------------------------------------ fence-peer evidence (the service's guards)

    def fence_record_id(self) -> str | None:
        ep = self.loop.state.durable.episode
        if ep is None or record_for(self.facts_now(), ep) is None:
            return None
        return episode_to_fencing(ep).key()

    def peer_disk_outdated(self, since: float) -> str | None:
        view = self.heartbeat.view()
        r = view.report
        if r is not None and view.report_age is not None and view.state in HEARD:
            received = time.monotonic() - view.report_age
            if received > since and r.resources.drbd.disk in OUTDATED_OR_WORSE:
                return f"{self.peer}'s heartbeat says its disk is {r.resources.drbd.disk}"
        f = self.world.drbd
        if f.known and f.peer_disk is not None and f.peer_disk.value == "Outdated":
            return "DRBD here sees the peer's disk Outdated"
        return None

    def drbd_connected(self) -> bool:
        f = self.world.drbd
        return f.known and f.connection is ConnState.CONNECTED

    # ------------------------------------------------------------------ events of the parts

    def _on_group_fact(self, fact: GroupFact) -> None:
        if isinstance(fact, RunRecord):
            self.poller.kick()
        elif isinstance(fact, ResourceFailure) and fact.vm is not None and fact.action == "start":
            n = self.failcounts.add(fact.vm, fact.at_wall, self.heartbeat.session.ident.boot_id)
            log.warning("VM %s failed to start (%s): fail count %d here", fact.vm, fact.reason, n,
                        extra={"fields": {"CLEVER_REASON": "vm_start_failed"}})
            self.world.touch()

    def _vm_crashed(self, vm: str) -> None:
        n = self.failcounts.add(vm, time.time(), self.heartbeat.session.ident.boot_id)
        log.warning("VM %s crashed: fail count %d here", vm, n, extra={"fields": {"CLEVER_REASON": "vm_crashed"}})
        self.world.touch()

    def _apply_cleanups(self, cleanups: tuple[Any, ...]) -> None:
        for c in sorted(cleanups, key=lambda c: c.serial):
            if c.node is not None and c.node != self.node:
                continue
            cleared = self.failcounts.apply_cleanup(c.serial, c.at, c.resource)
            if cleared:
                log.info("cleanup %d: fail counts of %s cleared", c.serial, ", ".join(cleared),
                         extra={"fields": {"CLEVER_REASON": "cleanup"}})

    def _spawn(self, coro: Awaitable[Any], name: str) -> asyncio.Future[Any]:
        task = asyncio.ensure_future(coro)
        task.set_name(name)
        self._tasks.append(task)
        task.add_done_callback(lambda t: self._tasks.remove(t) if t in self._tasks else None)
        return task

    # ------------------------------------------------------------------ building

    def _build(self) -> None:
        cfg = self.cfg
        c = cfg.cluster
        self.heartbeat = HeartbeatService.open(cfg, self.report, max_version=self.max_protocol)  # first: the new incarnation is on disk
        self.store = DurableStore(c.state_dir)
        durable = self.store.load()
        self.failcounts = FailCounts(c.state_dir)
        self.failcounts.load()
        self.world = World(cfg.drbd.resource, cfg.vms.domains)
        self.world.on_crash = self._vm_crashed
        self.heartbeat.subscribe(lambda _ev: self.world.touch())
        self.drbd = DrbdAdapter(cfg.drbd, on_change=self.world.on_drbd)
        self.pinger = GatewayPinger(cfg.gateway, on_update=self.world.on_gateway)
        self.forcible = ForcibleDrbd(self.drbd)
        self.group = assembly.build(cfg, self.forcible, self.gate_check, on_fact=self._on_group_fact, on_vm_facts=self.world.on_vms)
        self.poller = MountIpPoller(self.world, self.group.filesystem, self.group.ip)
        self.images = ImageScanner(self.world, ImageStore(cfg.vms.save_dir, self.group.filesystem))
        self.intent_copy = IntentCopy(self.group.filesystem, self.heartbeat)
        self.journal = FenceJournal(c.state_dir)
        self.levels = build_levels(cfg)
        self._make_fencing(cfg, self.levels, None)
        self.watchdog: SelfFenceGuard | None = build_watchdog(cfg, lambda: self.executor.self_fenced is None)
        self.alerts = AlertDispatcher(cfg.alerts, c.name, c.node, c.peer)
        self.fence_peer = FencePeerService(cfg.drbd.resource, c.peer, self, on_change=self.world.touch)
        self.metrics_registry = CollectorRegistry()
        self.instruments = Instruments(self.metrics_registry)
        self.metrics = Endpoint(cfg.metrics.listen, self.metrics_registry)
        self.history = History(on_closed=self.instruments.timeline_closed)
        self.executor = Executor(self, self.forcible, on_fence=self.instruments.fence_attempt)
        self.peer_off = PeerOffWatcher(self.world, self._peer_reads_off)
        self.loop = DecisionLoop(self, P.initial_state(durable), self.store, self.executor, self.history, self.notifier,
                                 self.world.changed, c.peer, on_lag=self.instruments.lag)
        from .commands import Commands  # the commands read the runtime; imported late to keep the module graph flat

        self.commands = Commands(self)
        handlers = {**self.commands.handlers(), **self.fence_peer.handlers()}
        self.control = ControlServer(socket_path(c.runtime_dir), handlers, c.control_group)

    def _make_fencing(self, cfg: config_mod.Config, levels: list[list[FenceAgent]], last_checked: dict[str, float] | None) -> None:
        ident = self.heartbeat.session.ident
        self.identity_book: IdentityBook = identity_book(cfg, levels)
        fe = cfg.fencing
        self.coordinator_ = FenceCoordinator(
            node=cfg.cluster.node, boot_id=ident.boot_id, own_machine_id=ident.machine_id or "", target=cfg.cluster.peer,
            levels=levels, journal=self.journal, identity=self.identity_book, gateway_gate=self.pinger.gate_open,
            peer_heard=self._peer_heard, peer_machine_id=self._peer_machine_id, after=fe.after, retry_backoff=fe.retry_backoff,
            retry_backoff_max=fe.retry_backoff_max, max_rounds=1)  # one round per FencePeer: the policy decides the retries
        self.monitor: DeviceMonitor = build_monitor(cfg, levels, self.identity_book, own_machine_id=ident.machine_id or "",
                                                    peer_machine_id=self._peer_machine_id, peer_heard=self._peer_heard,
                                                    last_checked=last_checked, peer_last_heard=self._peer_last_heard)

    def _peer_heard(self) -> bool:
        return self.heartbeat.view().state in HEARD

    def _peer_last_heard(self) -> float | None:
        return self.heartbeat.view().last_heard

    def _peer_machine_id(self) -> str | None:
        return self.heartbeat.view().machine_id

    async def _peer_reads_off(self) -> bool:
        coord = self.coordinator
        return False if coord is None else await coord.peer_reads_off()

    # ------------------------------------------------------------------ main

    async def run(self, shutdown: asyncio.Event) -> int:
        self._shutdown = shutdown
        try:
            self._build()
        except HeartbeatError as e:
            log.error("cannot start the heartbeat: %s", e)
            return 1
        except (StateError, OSError) as e:
            log.error("cannot start: %s", e)
            return 1
        try:
            await self.control.start()
        except (OSError, RuntimeError, KeyError) as e:
            log.error("cannot open the control socket: %s", e)
            return 1
        cfg = self.cfg
        self.metrics_registry.register(StatusCollector(StatusSource(asyncio.get_running_loop(), self.metrics_document)))
        self.metrics.start()  # a listen address that cannot be bound is logged; the daemon runs on without metrics
        await self.heartbeat.start()
        await self.drbd.start()
        self.alerts.start()
        for coro, name in ((self.pinger.run(), "gateway"), (self.poller.run(), "mount and address"),
                           (self.images.run(), "save images"), (self.group.start(connect_timeout=5.0), "libvirt")):
            self._spawn(coro, name)
        self._monitor_task = self._spawn(self._monitor_devices(), "fence devices")
        log.info("clever-clusterd %s started: node %s, peer %s, cluster %s, config %s",
                 VERSION, cfg.cluster.node, cfg.cluster.peer, cfg.cluster.name, self.config_path)
        self.notifier.ready(f"{cfg.cluster.node}: starting, observing")
        loop_task = asyncio.create_task(self._decide(), name="decision loop")
        try:
            await shutdown.wait()
            await self._clean_stop()
        finally:
            await self._release(loop_task)
        return EXIT_RESTART if self.announce.kind == "restarting" else 0

    async def _decide(self) -> None:
        """Observe first, then run the decision loop (DESIGN section 3)."""
        deadline = time.monotonic() + STARTUP_GRACE
        while (missing := self.world.observed()) and time.monotonic() < deadline:
            # The STARTING report carries what is observed so far (as the policy's model of a starting
            # node does): a restarted active shows the peer what it holds before it decides.
            self.snapshot()
            self._report = self._build_report()
            self.notifier.cycle_done(time.monotonic(), "starting: waiting for the first observation of "
                                     + ", ".join(m.split(" (")[0] for m in missing))
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.tick):
                    await self.world.changed.wait()
            self.world.changed.clear()
        if missing:
            log.error("deciding without a first observation of %s after %g s", ", ".join(missing), STARTUP_GRACE)
        self._arm_watchdog()
        self.deciding = True
        await self.loop.run()

    def _arm_watchdog(self) -> None:
        wd = self.watchdog
        if wd is None:
            return
        holding = P.view.holds(self.facts_now())
        try:
            wd.arm(disarm_on_refusal=not holding)
        except WatchdogRefused as e:
            self.watchdog_problem = str(e)
            log.critical("hardware watchdog refused: %s%s", e, "; it was left as the previous daemon armed it (resources are "
                         "held here), so it resets this node unless it is fixed and the daemon restarted" if holding else "",
                         extra={"fields": {"CLEVER_REASON": "watchdog_refused"}})
            self.alerts.raise_alert("watchdog_refused", "watchdog_refused", str(e), time.time())
            return
        self._spawn(wd.run(), "watchdog")

    async def _monitor_devices(self) -> None:
        """Runs the current device monitor; a fencing reload cancels this task once to switch to the new one."""
        while True:
            monitor = self.monitor
            try:
                try:
                    await monitor.run(lambda _r: self.world.touch())
                except Exception:
                    log.exception("fence device monitor failed")
                    await asyncio.sleep(60)
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if monitor is self.monitor or task is None or task.uncancel() > 0:
                    raise  # a stop (also one that came with the switch)
                # the switch, not a stop: go on with the new monitor

    def request_stop(self, *, restart: bool) -> None:
        """``clevervm daemon-restart`` (restart) or a signal: see the module docstring."""
        self.stop_requests += 1
        if restart:
            self.announce = Announce(kind="restarting", expected=self.cfg.heartbeat.restart_announce)
            self._stop_now.set()
        elif self.stop_requests > 1:
            log.warning("second stop request: stopping now, without waiting for a handover")
            self._stop_now.set()
        if self._shutdown is not None:
            self._shutdown.set()

    async def _clean_stop(self) -> None:
        if self._stop_now.is_set() or not self.deciding:
            return
        log.info("clean stop: handing over or stopping the resources before leaving", extra={"fields": {"CLEVER_REASON": "shutdown_requested"}})
        self.notifier.stopping(f"{self.node}: stopping: handing over first")
        self.world.shutting_down = True
        self.world.touch()
        while not self._stop_now.is_set():
            d = self.loop.decision
            if d is not None and d.ready_to_stop and d.state.published is not None and d.state.published.leaving:
                # one more datagram carries `leaving` before the announcement
                self.send_heartbeat()
                return
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.tick):
                    await self._stop_now.wait()

    async def _release(self, loop_task: asyncio.Task[None]) -> None:
        log.info("shutting down")
        self.notifier.stopping(f"{self.node}: stopping")
        holds = self.loop.facts is not None and P.view.holds(self.loop.facts)
        announce: Announce | None = self.announce
        if self.announce.kind == "leaving" and not self.world.drbd_observed:
            # `leaving` tells the peer "stopped; my report says what I hold". Without a DRBD observation
            # the report cannot say it (a Primary would look like nothing held, and the peer would take
            # it as a clean leave: no fence, no takeover, ever). Stop silently: the peer's loss rules apply.
            log.warning("stopping before DRBD was observed: no `leaving` announcement (the peer cannot tell what is held here)")
            announce = None
        phases: list[tuple[str, Callable[[], Awaitable[Any]]]] = [
            ("stop decision loop", lambda: _cancel(loop_task)),
            ("stop the metrics endpoint", lambda: asyncio.to_thread(self.metrics.stop)),
            ("stop actions", self.executor.close),
            ("answer waiting fence-peer handlers", _sync(self.fence_peer.close)),
            (f"announce {announce.kind if announce else 'nothing'} to {self.peer}, stop heartbeats", lambda: self.heartbeat.stop(announce)),
            ("stop observers", self._stop_tasks),
            ("close the watchdog", _sync(lambda: self._close_watchdog(holds))),
            ("stop fencing", self._close_fencing),
            ("stop alert hooks", self.alerts.stop),
            ("close libvirt", self.group.close),
            ("stop the DRBD observer", self.drbd.close),
            ("close control socket", self.control.close),
        ]
        errors: list[str] = []
        for name, action in phases:
            t0 = time.monotonic()
            try:
                await asyncio.wait_for(action(), SHUTDOWN_PHASE_TIMEOUT)
                log.info("shutdown: %s done in %.3f s", name, time.monotonic() - t0)
            except Exception as e:  # noqa: BLE001 - collect and go on releasing
                errors.append(f"{name}: {e!r}")
                log.error("shutdown: %s failed: %r", name, e)
        if errors:
            log.error("shutdown finished with %d error(s)", len(errors))
        else:
            log.info("shutdown complete")

    async def _stop_tasks(self) -> None:
        await self.peer_off.close()
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def _close_watchdog(self, holds: bool) -> None:
        if self.watchdog is not None:
            log.info("watchdog: %s", self.watchdog.stop(clean=self.announce.kind == "leaving", holds_resources=holds))

    async def _close_fencing(self) -> None:
        if self._fencing_swap is not None:
            self._fencing_swap.cancel()
        if self.coordinator_ is not None:
            await self.coordinator_.aclose()

    # ------------------------------------------------------------------ reload

    def reload(self) -> tuple[bool, list[str]]:
        """Re-read the config file. Returns (applied, problems)."""
        self.notifier.reloading()
        try:
            new = config_mod.load(self.config_path)
        except config_mod.ConfigError as e:
            return self._reload_failed(e.problems)
        old = self.cfg
        blocked = config_mod.restart_only_changes(old, new) + [s for s in RESTART_SECTIONS if getattr(old, s) != getattr(new, s)]
        if blocked:
            return self._reload_failed([f"{k}: changing this needs a restart (systemctl restart clever-clusterd)" for k in blocked])
        levels: list[list[FenceAgent]] | None = None
        if new.fencing != old.fencing:
            try:
                levels = build_levels(new)
            except OSError as e:
                return self._reload_failed([f"fencing: {e}"])
            if self._fencing_swap is not None and not self._fencing_swap.done():
                return self._reload_failed(["fencing: the previous reload is still waiting for a fence operation to end; retry"])
        try:
            self.heartbeat.reload(new)
        except KeyProblem as e:  # the old keys stay
            return self._reload_failed([str(e)])
        changed = config_mod.changed_sections(old, new)
        self.pinger.reconfigure(new.gateway)
        self.settings = settings_of(new)
        if new.alerts != old.alerts:
            old_alerts, self.alerts = self.alerts, AlertDispatcher(new.alerts, new.cluster.name, new.cluster.node, new.cluster.peer)
            self.alerts.start()
            self._spawn(old_alerts.stop(), "old alert hooks")
        if new.log != old.log:
            logsetup.setup(new.log.level, new.log.target)
        self.cfg = new
        if levels is not None:
            self._fencing_swap = asyncio.ensure_future(self._swap_fencing(new, levels))
        self.reloads_ok += 1
        self.last_reload_error = []
        log.info("configuration reloaded from %s; changed: %s", self.config_path, ", ".join(changed) or "nothing")
        self.notifier.reloaded(self.loop.verdict)
        return True, []

    async def _swap_fencing(self, cfg: config_mod.Config, levels: list[list[FenceAgent]]) -> None:
        """One coordinator at a time: the old one finishes its operation (decided under the old
        configuration, S2 holds for it) and is closed before the new one exists."""
        old = self.coordinator_
        if old is not None:
            # polled: the coordinator offers no completion event for an operation it runs for others
            while (st := old.status()) is not None and st.phase is not FencePhase.DONE:  # noqa: ASYNC110
                await asyncio.sleep(0.1)
            await old.aclose()
        last_checked = self.monitor.last_checked
        self.levels = levels
        self._make_fencing(cfg, levels, last_checked)
        if self._monitor_task is not None:
            # The task still runs the old monitor (old devices, old identity book): switch it to the
            # new one, or devices added by the reload are never checked, hence never trusted.
            self._monitor_task.cancel()
        log.info("fencing rebuilt from the reloaded configuration (%d levels)", len(levels))
        self.world.touch()

    def _reload_failed(self, problems: list[str]) -> tuple[bool, list[str]]:
        self.reloads_failed += 1
        self.last_reload_error = problems
        log.error("reload refused, keeping the running configuration: %s", "; ".join(problems),
                  extra={"fields": {"CLEVER_REASON": "reload_refused"}})
        self.notifier.reloaded(self.loop.verdict if hasattr(self, "loop") else "reload refused")
        return False, problems

    # ------------------------------------------------------------------ helpers for status and commands

    def daemon_status(self) -> dict[str, Any]:
        ident = self.heartbeat.session.ident
        lp = self.loop
        return {
            "pid": os.getpid(), "version": VERSION, "uptime_seconds": round(time.monotonic() - self.started_mono, 3),
            "started_at": self.started_wall, "config_path": str(self.config_path),
            "settings_fingerprint": config_mod.safety_fingerprint(self.cfg),
            "incarnation": ident.incarnation, "boot_id": ident.boot_id, "machine_id": ident.machine_id,
            "deciding": self.deciding, "waiting_for": [] if self.deciding else self.world.observed(),
            "loop": {"lag_seconds": round(lp.loop_lag, 6), "max_lag_seconds": round(lp.max_lag, 6),
                     "last_cycle_seconds": round(lp.last_cycle_seconds, 6), "stalls": lp.stalls, "cycles": lp.cycles,
                     "errors": lp.errors},
            "reloads": {"ok": self.reloads_ok, "failed": self.reloads_failed, "last_error": self.last_reload_error},
            "watchdog": None if self.watchdog is None else {
                "armed": self.watchdog.armed, "feeding": self.watchdog.feeding, "timeout": self.watchdog.actual_timeout,
                "problem": self.watchdog_problem, "self_fence": self.executor.self_fenced},
        }

    async def metrics_document(self) -> dict[str, Any]:
        """What a metrics scrape reads: the status document plus the decision counts of the history."""
        doc = await document(self)
        doc["decision_counts"] = dict(self.history.counts)
        return doc

    def fence_records(self) -> list[FenceRecord]:
        return [r for r in self.journal.records() if r.target == self.peer]

    def peer_state(self) -> PeerState:
        return self.heartbeat.view().state


def settings_of(cfg: config_mod.Config) -> P.Settings:
    return P.Settings.from_sections(cluster=cfg.cluster, heartbeat=cfg.heartbeat, gateway=cfg.gateway, fencing=cfg.fencing,
                                    policy=cfg.policy, watchdog_enabled=cfg.watchdog.enabled)


def _sync(fn: Callable[[], Any]) -> Callable[[], Awaitable[None]]:
    async def run() -> None:
        fn()
    return run


async def _cancel(task: asyncio.Task[Any]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def install_signal_handlers(runtime: Runtime, shutdown: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, lambda: runtime.request_stop(restart=False))
    loop.add_signal_handler(signal.SIGINT, lambda: runtime.request_stop(restart=False))
    loop.add_signal_handler(signal.SIGHUP, runtime.reload)
    del shutdown  # the runtime sets it (kept in the signature for main.py)

