"""The virtual-clock two-node cluster: network, gateways, DRBD, fence
devices, nodes running the real ``policy.step`` with an executor model, and
the oracle watching every tick.

One ``advance()`` is one tick (``heartbeat_interval``): node events (boots,
restarts, hangs ending), DRBD, heartbeats, gateway observers, fence devices,
sequences, application writes, then one decision per live node, then the
oracle's world checks. Everything random comes from one seeded generator (and
the fence jitter from a hash of seed, time and node), so a (seed, schedule)
pair replays exactly. The executor and fencing coordinator models are mixed
in from ``executor.py``; timings and settings are in ``config.py``.
"""

from __future__ import annotations

import copy
import dataclasses
import random

from clever_cluster.policy import (
    NO_MUTATIONS,
    Action,
    Alert,
    AnswerFencePeer,
    Conn,
    Decision,
    Demote,
    DisconnectDrbd,
    Drbd,
    Facts,
    FailCount,
    FenceAttempt,
    FencedIncarnation,
    FencePeer,
    Fencing,
    FreshProbe,
    Gateway,
    HandlerOutcome,
    ImageToken,
    Intent,
    Link,
    Local,
    Mutations,
    OutdateLocalDisk,
    PeerFacts,
    PeerReport,
    Phase,
    ProbeGateway,
    Promote,
    Publish,
    ReconnectDrbd,
    Resources,
    ResumeIo,
    Role,
    SelfFence,
    Sequence,
    SequenceKind,
    Settings,
    StartVm,
    StopCause,
    StopVm,
    Suspended,
    TargetRole,
    Vm,
    VmState,
    WaitUntil,
    fence_peer_exit_code,
    initial_state,
    step,
)

from . import oracle as oracle_mod
from .config import DEFAULT_SETTINGS, DEFAULT_TIMING, LINKS, DirLink, LogLine, Timing
from .drbd import DataTree, DrbdPair
from .executor import ExecutorModel
from .fencedev import Device, Mode
from .node import Node


def _act_name(a: Action) -> str:
    match a:
        case FencePeer():
            return "fence_peer" + (" (operator)" if a.operator else "")
        case Promote():
            return f"promote[{a.gate}]" + (" force" if a.force else "") + (" restore " + ",".join(p.name for p in a.vms if p.restore) if any(p.restore for p in a.vms) else "")
        case Demote():
            return f"demote[{a.mode}]"
        case StartVm():
            return f"start_vm {a.plan.name}" + (" restore" if a.plan.restore else "")
        case StopVm():
            return f"stop_vm {a.name}" + (" save" if a.save else "")
        case AnswerFencePeer():
            return f"answer_fence_peer {a.exit_code}"
        case Alert():
            return f"alert {a.kind}"
        case _:
            return type(a).__name__


class World(ExecutorModel):
    def __init__(self, *, seed: int = 0, settings: dict[str, float] | None = None, timing: Timing = DEFAULT_TIMING,
                 vms: tuple[str, ...] = ("vm1", "vm2"), mutations: Mutations = NO_MUTATIONS,
                 preferred_node: str | None = None, write_every: float | None = None) -> None:
        self.t = 0.0
        self.seed = seed
        self.rng = random.Random(seed)
        self.timing = timing
        self.mutations = mutations
        sv = dict(DEFAULT_SETTINGS if settings is None else settings)
        self.names = ("node1", "node2")
        self.settings = {n: Settings(node=n, peer=self._other(n), preferred_node=preferred_node, **sv) for n in self.names}  # type: ignore[arg-type]
        self.tick = float(sv["heartbeat_interval"])
        self.write_every = write_every or self.tick
        self.next_write = 0.0
        self.nodes = {n: Node(n, f"uuid-{n}", vms) for n in self.names}
        self.tree = DataTree()
        self.drbd = DrbdPair(self.names, self.tree, timing.ping_timeout)
        self.links = {(ln, src): DirLink() for ln in LINKS for src in self.names}
        self.gateway_up = {n: True for n in self.names}
        self.devices: dict[str, list[list[Device]]] = {
            n: [[Device(f"bmc-{self._other(n)}", self._other(n), time=timing.device, slow_time=timing.device_slow,
                        timeout=timing.device_timeout)]] for n in self.names}
        self.intent = Intent()
        self.oracle = oracle_mod.Oracle()
        self.log: list[LogLine] = []
        self.fence_count = 0
        self.power_events: list[tuple[float, str, str]] = []
        self.after_fence_on = True
        self.step_failures: dict[str, set[str]] = {n: set() for n in self.names}   # one-shot injected failures per step op
        self.vm_names = vms
        for n in self.names:
            self.nodes[n].state = initial_state(self.nodes[n].durable)

    def _other(self, n: str) -> str:
        return self.names[1] if n == self.names[0] else self.names[0]

    # ================================================================ the tick
    def advance(self) -> None:
        self.t = round(self.t + self.tick, 6)
        t = self.t
        for n in self.nodes.values():
            self._node_events(n)
        self._drbd_tick()
        self._heartbeats()
        for n in self.nodes.values():
            if n.alive:
                self._gateway_observer(n)
                self._fence_progress(n)
                self._sequence_progress(n)
        self._app_writes()
        for name in self.names:
            n = self.nodes[name]
            if n.alive:
                self._decide(n)
        self._check_world()
        del t

    def run_until(self, t_end: float) -> None:
        while self.t < t_end - 1e-9:
            self.advance()

    # ================================================================ node lifecycle
    def _node_events(self, n: Node) -> None:
        t = self.t
        if not n.powered and n.boot_at is not None and t >= n.boot_at:
            n.boot_at = None
            n.powered = True
            n.boot_seq += 1
            self.drbd.boot(n.name)
            self.power_events.append((t, n.name, "boot"))
            self._start_daemon(n)
        if n.powered and n.daemon in ("crashed", "stopped") and n.restart_at is not None and t >= n.restart_at:
            n.restart_at = None
            self._start_daemon(n)
        if n.powered and n.daemon == "hung" and n.hang_until is not None and t >= n.hang_until:
            n.hang_until = None
            n.daemon = "running"
            n.stalled = True
            n.last_heard = {}    # receivers drained: what queued during the stall is not fresh

    def _start_daemon(self, n: Node) -> None:
        n.incarnation += 1
        n.daemon = "running"
        n.announce_restart_until = None
        n.shutting_down = False
        n.reset_daemon_memory()
        n.state = initial_state(n.durable)
        n.gw_next_probe = self.t + self.timing.gateway_interval

    def _daemon_gone(self, n: Node) -> None:
        """The daemon process ended: a waiting fence-peer handler loses its connection (exit 1)."""
        dn = self.drbd.n[n.name]
        if dn.handler:
            self.drbd.handler_exit(n.name, fence_peer_exit_code(HandlerOutcome.ERROR))

    def power_off(self, name: str, clean: bool = False, reason: str = "power loss") -> None:
        n = self.nodes[name]
        if not n.powered:
            return
        self._daemon_gone(n)
        n.powered = False
        n.daemon = "off"
        n.restart_at = n.hang_until = None
        n.mounted = n.ip = False
        for v in n.vms.values():
            v.state, v.cause = VmState.STOPPED, StopCause.NONE
        self.drbd.power_off(name, clean)
        n.reset_daemon_memory()
        self.power_events.append((self.t, name, reason))

    def power_on(self, name: str, after: float = 0.0) -> None:
        n = self.nodes[name]
        if not n.powered and n.boot_at is None:
            n.boot_at = self.t + after + self.timing.boot

    def crash_daemon(self, name: str) -> None:
        n = self.nodes[name]
        if n.powered and n.daemon in ("running", "hung"):
            self._daemon_gone(n)
            n.daemon = "crashed"
            n.hang_until = None
            n.restart_at = self.t + self.timing.daemon_restart

    def hang_daemon(self, name: str, duration: float) -> None:
        n = self.nodes[name]
        if n.powered and n.daemon == "running":
            n.daemon = "hung"
            n.hang_until = self.t + duration

    def restart_daemon(self, name: str) -> None:
        """A clean, announced restart (systemctl restart)."""
        n = self.nodes[name]
        if n.alive:
            n.announce_restart_until = self.t + self.timing.restart_announce
            self._send_all(n)
            self._daemon_gone(n)
            n.daemon = "stopped"
            n.restart_at = self.t + self.timing.daemon_restart

    def clean_reboot(self, name: str, power_on: bool = True) -> None:
        """A clean reboot (or, ``power_on=False``, a clean shutdown): the daemon stops cleanly, then
        DRBD goes down gracefully and the power goes off."""
        n = self.nodes[name]
        if n.alive:
            n.shutting_down = True
            n.reboot_after_stop = True
            n.stays_off_after_stop = not power_on

    # ================================================================ DRBD
    def _path_ok(self) -> bool:
        a, b = self.names
        return (self.nodes[a].powered and self.nodes[b].powered and self.links[("bond0", a)].up
                and self.links[("bond0", b)].up)

    def _drbd_tick(self) -> None:
        self.drbd.update(self.t, self._path_ok())
        self.drbd.sync_views()
        for name in self.names:
            dn = self.drbd.n[name]
            n = self.nodes[name]
            if dn.handler and n.powered and n.daemon in ("crashed", "stopped", "off"):
                code = fence_peer_exit_code(HandlerOutcome.DAEMON_UNREACHABLE, mutations=self.mutations)
                self.drbd.handler_exit(name, code)

    def write(self, n: Node, *, app: bool, images: dict[str, tuple[ImageToken, bool]] | None = None) -> int | None:
        """A write on Primary ``n`` under protocol C; the write id when acknowledged."""
        dn = self.drbd.n[n.name]
        if dn.role is not Role.PRIMARY or dn.suspended or not dn.up:
            return None
        peer = self.drbd.n[self._other(n.name)]
        if dn.conn is Conn.CONNECTED:
            if not (self._path_ok() and peer.up and peer.conn is Conn.CONNECTED):
                return None    # protocol C waits for the peer: blocked until DRBD notices
            wid = self.tree.add(dn.head, app=app, images=images)
            dn.head = peer.head = wid
            return wid
        wid = self.tree.add(dn.head, app=app, images=images)
        dn.head = wid
        return wid

    def _app_writes(self) -> None:
        if self.t + 1e-9 < self.next_write:
            return
        self.next_write = self.t + self.write_every
        for n in self.nodes.values():
            if n.powered and n.mounted and any(v.state is VmState.RUNNING for v in n.vms.values()):
                wid = self.write(n, app=True)
                if wid is not None:
                    self.oracle.write_acked(wid)

    # ================================================================ network
    def _report(self, n: Node) -> PeerReport:
        ann = n.state.published
        dn = self.drbd.n[n.name]
        fenced = tuple(FencedIncarnation(r.episode.peer, r.episode.peer_incarnation, r.episode.peer_boot_id) for r in n.records)
        return PeerReport(
            node=n.name, incarnation=n.incarnation, boot_id=n.boot_id, machine_id=n.machine_id, received_at=self.t,
            phase=(ann.phase if ann else Phase.STARTING).value, epoch=(ann.epoch if ann else n.durable.epoch),
            data_uuid=self.tree.uuid(dn.head), disk=dn.disk, drbd_primary=dn.role is Role.PRIMARY,
            mounted=n.mounted, ip=n.ip, vms_running=sum(v.state is VmState.RUNNING for v in n.vms.values()),
            gateway_score=n.gw_score, eligible=bool(ann and ann.eligible),
            grant=ann.grant if ann else None, ack=ann.ack if ann else None, decline=ann.decline if ann else None,
            outdate_request=bool(ann and ann.outdate_request), leaving=bool(ann and ann.leaving),
            restarting_until=n.announce_restart_until, fenced=fenced,
            fail_counts=ann.fail_counts if ann else (), settings_fingerprint="same",
        )

    def _send_all(self, src: Node) -> None:
        dst = self.nodes[self._other(src.name)]
        if not dst.powered or dst.daemon != "running":
            return
        rep = None
        for ln in LINKS:
            dl = self.links[(ln, src.name)]
            if not dl.up or self.t < dl.burst_until or (dl.loss and self.rng.random() < dl.loss):
                continue
            if src.keys[0] not in dst.keys:
                dst.unauth_at = self.t
                continue
            if abs(src.proto - dst.proto) > 1:
                dst.incompatible_at = self.t
                continue
            if rep is None:
                rep = self._report(src)
                if rep.restarting_until is not None and rep.restarting_until <= self.t:
                    rep = dataclasses.replace(rep, restarting_until=None)
            dst.last_heard[ln] = self.t
            dst.report = rep
            dst.heard_boot = dst.boot_id

    def _heartbeats(self) -> None:
        for n in self.nodes.values():
            if n.alive:
                self._send_all(n)

    # ================================================================ gateway
    def _gateway_observer(self, n: Node) -> None:
        t = self.t
        if n.probe_due is not None and t >= n.probe_due:
            n.probe_due = None
            n.fresh = FreshProbe(t, 1 if self.gateway_up[n.name] else 0)
        if t + 1e-9 < n.gw_next_probe:
            return
        n.gw_next_probe = t + self.timing.gateway_interval
        raw = 1 if self.gateway_up[n.name] else 0
        if n.gw_score is None:
            n.gw_score = raw
        elif raw == n.gw_score:
            n.gw_candidate = None
        elif raw != n.gw_candidate:
            n.gw_candidate, n.gw_candidate_since = raw, t
        elif t - n.gw_candidate_since >= self.settings[n.name].gateway_dampen:
            n.gw_score, n.gw_candidate = raw, None

    def _dispatch(self, n: Node, a: Action) -> None:
        name = n.name
        match a:
            case FencePeer():
                self._fence_start(n, a)
            case ProbeGateway():
                if n.probe_due is None:
                    n.probe_due = self.t + self.timing.probe
            case Promote():
                if n.seq is None:
                    self._begin(n, SequenceKind.PROMOTE, a.gate, self._promote_steps(a), a)
            case Demote():
                if n.seq is None:
                    self._begin(n, SequenceKind.DEMOTE, a.gate, self._demote_steps(n, a), a)
            case StartVm():
                # the VM actions of one decision run together, as one parallel step
                if n.seq is None:
                    self._begin(n, SequenceKind.VM, a.gate, [("vm_start", (a.plan,))], a)
                elif n.seq.started_at == self.t and n.seq.kind is SequenceKind.VM and n.seq.steps[0][0] == "vm_start":
                    n.seq.steps[0] = ("vm_start", (*n.seq.steps[0][1], a.plan))
            case StopVm():
                if n.seq is None:
                    self._begin(n, SequenceKind.VM, a.gate, [("vm_forcestop_save" if a.save else "vm_down", (a.name,) if a.save else (a.name, None))], a)
                elif n.seq.started_at == self.t and n.seq.kind is SequenceKind.VM and n.seq.steps[0][0] == "vm_forcestop_save":
                    n.seq.steps[0] = ("vm_forcestop_save", (*n.seq.steps[0][1], a.name))
            case DisconnectDrbd():
                self.drbd.disconnect(name)
            case ReconnectDrbd():
                self.drbd.connect(name)
            case ResumeIo():
                self.drbd.resume_io(name)
            case OutdateLocalDisk():
                self.drbd.outdate(name)
            case AnswerFencePeer():
                if self.drbd.n[name].handler:
                    self.drbd.handler_exit(name, fence_peer_exit_code(HandlerOutcome.ANSWERED, a.exit_code, mutations=self.mutations))
            case SelfFence():
                self.power_off(name, reason="self-fence")
            case Publish() | Alert() | WaitUntil():
                pass

    # ================================================================ deciding
    def observe(self, n: Node) -> Facts:
        t = self.t
        s = self.settings[n.name]
        dn = self.drbd.n[n.name]
        imgs = self._images(n)
        vms = tuple(Vm(name, v.state, v.cause, n.image_view(imgs, name)) for name, v in n.vms.items())
        at = n.attempt
        attempt = FenceAttempt(at.episode, at.started_at, at.running, at.finished_at, at.detail) if at is not None else None  # type: ignore[arg-type]
        peer_dev = self.devices[n.name][0][0]
        return Facts(
            now=t,
            local=Local(n.name, n.incarnation, n.boot_id, n.machine_id, n.shutting_down, "same"),
            peer=PeerFacts(
                links=tuple(Link(ln, t - n.last_heard[ln] if ln in n.last_heard else None) for ln in LINKS),
                report=n.report,
                incompatible=n.incompatible_at is not None and t - n.incompatible_at < s.heartbeat_timeout,
                unauthenticated=n.unauth_at is not None and t - n.unauth_at < s.heartbeat_timeout,
            ),
            gateway=Gateway(n.gw_score, n.fresh),
            drbd=Drbd(dn.role, dn.peer_role, dn.conn, dn.disk, dn.peer_disk, self.tree.uuid(dn.head), dn.split_brain,
                      Suspended.FENCING if dn.suspended else Suspended.NO, dn.handler, dn.config_safe,
                      "" if dn.config_safe else "protocol A", dn.connected_at),
            resources=Resources(n.mounted, n.ip, vms),
            intent=self.intent,
            fencing=Fencing(tuple(n.records), attempt, n.failures if at is not None and n.failures_episode == at.episode else 0,
                            peer_dev.reports_off(self.nodes[peer_dev.target].powered)),
            fail_counts=tuple(n.fail_counts.values()),
            sequence=Sequence(n.seq.kind, n.seq.gate, n.seq.started_at) if n.seq is not None else None,
            last_result=n.last_result,
            stalled=n.stalled,
            random_draw=self._draw(n.name),
        )

    def clone(self) -> World:
        """An independent copy (immutable parts shared): for exhaustive branching."""
        w = copy.copy(self)
        w.rng = random.Random()
        w.rng.setstate(self.rng.getstate())
        w.nodes = {k: n.clone() for k, n in self.nodes.items()}
        w.tree = self.tree.clone()
        w.drbd = self.drbd.clone(w.tree)
        w.links = {k: copy.copy(v) for k, v in self.links.items()}
        w.gateway_up = dict(self.gateway_up)
        w.step_failures = {k: set(v) for k, v in self.step_failures.items()}
        w.devices = {k: [[copy.copy(d) for d in lvl] for lvl in lvls] for k, lvls in self.devices.items()}
        w.oracle = self.oracle.clone()
        w.log = list(self.log)
        w.power_events = list(self.power_events)
        return w

    def _draw(self, name: str) -> float:
        """The fence jitter draw: a pure function of (seed, time, node), so runs replay and branches compare."""
        x = (self.seed * 1_000_003 + int(self.t * 1000) * 7919 + (17 if name == self.names[0] else 29)) & 0xFFFFFFFF
        x = (x * 2654435761) & 0xFFFFFFFF
        x ^= x >> 15
        return (x & 0xFFFFFF) / float(1 << 24)

    def fingerprint(self) -> tuple[object, ...]:
        """Everything that decides the future of this world (for deduplicating exhaustive branches)."""
        parts: list[object] = [self.t, self.next_write, self.intent, tuple(sorted(self.gateway_up.items())),
                               tuple((k, tuple(sorted(v))) for k, v in sorted(self.step_failures.items())),
                               tuple((k, dl.up, dl.loss, dl.burst_until) for k, dl in sorted(self.links.items())),
                               tuple((f, tuple((d.mode, d.target) for d in lvl)) for f, lvls in sorted(self.devices.items()) for lvl in lvls)]
        for n in self.nodes.values():
            dn = self.drbd.n[n.name]
            sq = n.seq
            at = n.attempt
            head = dn.head
            missing = tuple(sorted(w for w in self.oracle.acked if not self.tree.contains(head, w)))
            parts.append((
                n.powered, n.boot_seq, n.boot_at, n.daemon, n.restart_at, n.hang_until, n.incarnation, n.state,
                tuple(n.records), tuple(sorted(n.fail_counts.items())), tuple((k, v.state, v.cause) for k, v in n.vms.items()),
                n.mounted, n.ip, n.proto, n.keys, n.shutting_down, n.reboot_after_stop, n.stays_off_after_stop, n.announce_restart_until, n.heard_boot,
                tuple(sorted(n.last_heard.items())), n.report, n.incompatible_at, n.unauth_at, n.gw_score, n.gw_candidate,
                n.gw_candidate_since, n.gw_next_probe, n.fresh, n.probe_due, n.stalled, n.free_since,
                None if sq is None else (sq.kind, sq.gate, sq.index, sq.next_at, sq.started_at, sq.origin),
                n.last_result, None if at is None else (at.episode, at.started_at, at.level, at.device, at.op_end, at.level_ok, at.running, at.finished_at, at.detail),
                n.failures, n.failures_episode,
                dn.role, dn.disk, dn.conn, dn.peer_disk, dn.peer_role, self.tree.uuid(head), tuple(sorted(self.tree.writes[head].images.items())),
                missing, dn.suspended, dn.handler, dn.promoting, dn.split_brain, dn.up, dn.path_lost_at, dn.config_safe, dn.connected_at,
            ))
        parts.append(self.drbd.n[self.names[0]].head == self.drbd.n[self.names[1]].head)
        parts.append(tuple(sorted(self.oracle.consumed)))
        return tuple(parts)

    def _decide(self, n: Node) -> None:
        facts = self.observe(n)
        n.stalled = False
        prev = n.state
        s = self.settings[n.name]
        d: Decision = step(prev, facts, s, mutations=self.mutations)
        for v in oracle_mod.check_decision(prev, facts, s, d, heard_this_boot=n.heard_boot == n.boot_id, free_since=n.free_since):
            self.oracle.fail(self.t, "rule", f"{n.name}: {v} [{d.reason}]")
        if d.phase in (Phase.MAINTENANCE, Phase.BLOCKED):
            n.free_since = self.t + self.tick      # kept from fencing at least until the next decision
        if d.state.durable != n.durable:
            n.durable = d.state.durable       # persisted before acting
        n.state = d.state
        if d.reason.code.value != prev.last_code or any(not isinstance(a, (WaitUntil, Publish, ProbeGateway)) for a in d.actions):
            names = tuple(_act_name(a) for a in d.actions if not isinstance(a, (WaitUntil, Publish)))
            last = next((ln for ln in reversed(self.log) if ln.node == n.name), None)
            if last is None or last.code != d.reason.code.value or last.actions != names:
                self.log.append(LogLine(self.t, n.name, d.phase, d.reason.code.value, d.reason.sentence, names))
        for a in d.actions:
            self._dispatch(n, a)
        if d.ready_to_stop and n.shutting_down:
            self._clean_stop(n)

    def _clean_stop(self, n: Node) -> None:
        self._send_all(n)    # the last heartbeat says leaving
        self._daemon_gone(n)
        if n.reboot_after_stop:
            n.reboot_after_stop = False
            self.power_off(n.name, clean=True, reason="clean shutdown" if n.stays_off_after_stop else "clean reboot")
            if not n.stays_off_after_stop:
                self.power_on(n.name)
        else:
            n.daemon = "stopped"

    # ================================================================ oracle
    def holders(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {"drbd primary": [], "mount": [], "ip": []}
        for vm in self.vm_names:
            out[vm] = []
        for n in self.nodes.values():
            if not n.powered:
                continue
            if self.drbd.n[n.name].role is Role.PRIMARY:
                out["drbd primary"].append(n.name)
            if n.mounted:
                out["mount"].append(n.name)
            if n.ip:
                out["ip"].append(n.name)
            for vm, v in n.vms.items():
                if v.state in (VmState.RUNNING, VmState.PAUSED):
                    out[vm].append(n.name)
        return out

    def _check_world(self) -> None:
        self.oracle.exclusive(self.t, self.holders())

    def service_up(self) -> str | None:
        """The node running the whole group as intended, if any."""
        for n in self.nodes.values():
            whole = n.powered and self.drbd.n[n.name].role is Role.PRIMARY and n.mounted and n.ip
            if whole and (self.intent.target_role is TargetRole.STOPPED or all(v.state is VmState.RUNNING for v in n.vms.values())):
                return n.name
        return None

    # ================================================================ faults and operator commands
    def cut(self, link: str, src: str | None = None) -> None:
        for s in self.names:
            if src is None or s == src:
                self.links[(link, s)].up = False

    def heal(self, link: str | None = None) -> None:
        for (ln, _), dl in self.links.items():
            if link is None or ln == link:
                dl.up, dl.loss, dl.burst_until = True, 0.0, 0.0

    def set_loss(self, link: str | None, p: float) -> None:
        for (ln, _), dl in self.links.items():
            if link is None or ln == link:
                dl.loss = p

    def burst(self, link: str | None, duration: float) -> None:
        for (ln, _), dl in self.links.items():
            if link is None or ln == link:
                dl.burst_until = self.t + duration

    def vm_crash(self, name: str, vm: str) -> None:
        n = self.nodes[name]
        v = n.vms[vm]
        if n.powered and v.state is VmState.RUNNING:
            v.state, v.cause = VmState.CRASHED, StopCause.CRASH
            old = n.fail_counts.get(vm)
            n.fail_counts[vm] = FailCount(vm, (old.count if old else 0) + 1, self.t)

    def vm_stop_outside(self, name: str, vm: str) -> None:
        v = self.nodes[name].vms[vm]
        if v.state is VmState.RUNNING:
            v.state, v.cause = VmState.STOPPED, StopCause.OUTSIDE

    def set_intent(self, **kw: object) -> None:
        self.intent = dataclasses.replace(self.intent, version=self.intent.version + 1, **kw)  # type: ignore[arg-type]

    def set_device(self, fencer: str, level: int, mode: Mode) -> None:
        while len(self.devices[fencer]) <= level:
            peer = self._other(fencer)
            self.devices[fencer].append([Device(f"pdu-{peer}", peer, time=self.timing.device, slow_time=self.timing.device_slow,
                                                timeout=self.timing.device_timeout)])
        for dev in self.devices[fencer][level]:
            dev.mode = mode
        if mode is Mode.WRONG_MACHINE:
            for dev in self.devices[fencer][level]:
                dev.target = dev.target  # wired elsewhere: the identity check refuses it
