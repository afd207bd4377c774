"""The executor and fencing coordinator models of a simulated node.

Sequences are lists of data steps (op, args) that take virtual time; the gate
token is re-validated with the real ``policy.gate_valid`` before each step,
a failed step rolls back what the sequence did (promote) and reports a
result. The fencing coordinator runs levels of devices and records a fence
only when every device of a level verified the peer's machine off and
proved it controls the machine the peer publishes (S2, DESIGN §8).

Invariant: nothing here decides; it carries out the policy's actions and
reports progress through the node's state that ``World.observe`` turns into
facts. The oracle is told about promotions and restores as they happen.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from clever_cluster.policy import (
    Conn,
    Demote,
    DemoteMode,
    Disk,
    Evidence,
    FencePeer,
    FenceRecord,
    ImageKind,
    ImageToken,
    Mutations,
    Promote,
    Role,
    SequenceKind,
    SequenceResult,
    Settings,
    StopCause,
    VmPlan,
    VmState,
    gate_valid,
)

from .drbd import PENDING
from .fencedev import Attempt, Device, Result
from .node import Node, SeqRun

if TYPE_CHECKING:
    from clever_cluster.policy import Facts

    from .config import Timing
    from .drbd import DataTree, DrbdPair
    from .oracle import Oracle


class ExecutorModel:
    """Mixed into ``World``; the attributes below are the world's."""

    if TYPE_CHECKING:
        t: float
        tick: float
        timing: Timing
        nodes: dict[str, Node]
        drbd: DrbdPair
        tree: DataTree
        devices: dict[str, list[list[Device]]]
        mutations: Mutations
        oracle: Oracle
        settings: dict[str, Settings]
        after_fence_on: bool
        step_failures: dict[str, set[str]]
        fence_count: int
        vm_names: tuple[str, ...]

        def _other(self, n: str) -> str: ...
        def observe(self, n: Node) -> Facts: ...
        def power_off(self, name: str, clean: bool = False, reason: str = "power loss") -> None: ...
        def power_on(self, name: str, after: float = 0.0) -> None: ...
        def write(self, n: Node, *, app: bool, images: dict[str, tuple[ImageToken, bool]] | None = None) -> int | None: ...

    # ================================================================ fencing coordinator model
    def _fence_start(self, n: Node, a: FencePeer) -> None:
        if n.attempt is not None and n.attempt.running:
            return
        if n.failures_episode != a.episode:
            n.failures_episode, n.failures = a.episode, 0
        at = Attempt(a.episode, self.t)
        self._device_begin(n, at)
        n.attempt = at
        self.fence_count += 1

    def _device_begin(self, n: Node, at: Attempt) -> None:
        dev = self.devices[n.name][at.level][at.device]
        target = self.nodes[dev.target]
        at.op_target_powered = target.powered
        at.op_end = self.t + dev.duration(target.powered)
        at.off_at = None
        # the coordinator re-validates its gate (the episode) before each device operation
        if n.state.durable.episode != at.episode or self._heard(n):
            at.off_at = None
            at.op_end = self.t
            at.detail = "episode closed: the peer was heard again"
            at.level_ok = False
            return
        if dev.powers_off() and target.powered:
            at.off_at = self.t + dev.off_delay()
            if at.off_at <= self.t:
                self._device_off(n, dev)
                at.off_at = None

    def _heard(self, n: Node) -> bool:
        s = self.settings[n.name]
        return any(self.t - v < s.heartbeat_timeout for v in n.last_heard.values())

    def _device_off(self, n: Node, dev: Device) -> None:
        self.power_off(dev.target, reason=f"fenced by {n.name} ({dev.name})")

    def _fence_progress(self, n: Node) -> None:
        at = n.attempt
        if at is None or not at.running:
            return
        levels = self.devices[n.name]
        dev = levels[at.level][at.device]
        if at.off_at is not None and self.t + 1e-9 >= at.off_at:
            at.off_at = None
            self._device_off(n, dev)
        if self.t + 1e-9 < at.op_end:
            return
        target = self.nodes[dev.target]
        if at.level_ok or not at.detail.startswith("episode closed"):
            res = dev.outcome(target.powered, at.op_target_powered)
            expected = n.report.machine_id if n.report is not None else None
            ok = (res is Result.OFF and target.machine_id == expected) \
                or (res is Result.ACCEPTED and self.mutations.accepted_counts_as_off)
            if not ok:
                at.level_ok = False
                at.detail = f"level {at.level + 1} {dev.name}: {res}"
        if at.device + 1 < len(levels[at.level]) and at.level_ok:
            at.device += 1
            self._device_begin(n, at)
            return
        if at.level_ok:
            rec = FenceRecord(at.episode, Evidence.DEVICE, target.machine_id, self.t)  # type: ignore[arg-type]
            n.records.append(rec)
            at.running, at.finished_at = False, self.t
            if self.after_fence_on and dev.powers_off():
                self.power_on(dev.target, after=self.timing.power_on_after_fence)
            return
        if at.level + 1 < len(levels) and not at.detail.startswith("episode closed"):
            at.level, at.device, at.level_ok = at.level + 1, 0, True
            self._device_begin(n, at)
            return
        at.running, at.finished_at = False, self.t
        n.failures += 1

    def operator_confirm(self, name: str, accept_data_loss: bool) -> str:
        n = self.nodes[name]
        facts = self.observe(n)
        if any(ln.age is not None and ln.age < self.settings[name].heartbeat_timeout for ln in facts.peer.links):
            return "refused: peer is heard"
        if self.drbd.n[name].conn is Conn.CONNECTED:
            return "refused: DRBD is Connected"
        ep = n.state.durable.episode
        if ep is None:
            return "refused: no loss episode"
        n.records.append(FenceRecord(ep, Evidence.OPERATOR, "operator", self.t, accept_data_loss))
        return "recorded"

    # ================================================================ executor model
    # A sequence is a list of data steps (op, args) interpreted by _run_step, so that a
    # cloned world carries no closures bound to its parent.
    def _sequence_progress(self, n: Node) -> None:
        sq = n.seq
        if sq is None or self.t + 1e-9 < sq.next_at:
            return
        facts = self.observe(n)
        op, args = sq.steps[sq.index]
        if not gate_valid(n.state, facts, self.settings[n.name], sq.gate):
            self._seq_end(n, ok=False, detail=f"gate {sq.gate} no longer valid before {op}")
            return
        err = self._run_step(n, sq, op, args)
        if err == PENDING:
            sq.next_at = self.t + self.tick    # `drbdadm primary` still waits for the fence-peer handler
            return
        if err is not None:
            self._seq_end(n, ok=False, detail=f"{op}: {err}")
            return
        sq.index += 1
        sq.next_at = self.t + self.timing.seq_step
        if sq.index >= len(sq.steps):
            self._seq_end(n, ok=True, detail="")

    def _seq_end(self, n: Node, ok: bool, detail: str) -> None:
        sq = n.seq
        assert sq is not None
        if not ok:
            self.drbd.promote_abandoned(n.name)
            for op in reversed(sq.undo):
                self._undo(n, op)
        n.last_result = SequenceResult(sq.kind, sq.gate, ok, self.t, detail)
        n.seq = None

    def _undo(self, n: Node, op: str) -> None:
        match op:
            case "drbd_primary":
                self.drbd.demote(n.name)
            case "mount":
                n.mounted = False
            case "ip":
                n.ip = False
            case _:
                n.vms[op].state, n.vms[op].cause = VmState.STOPPED, StopCause.CLUSTER

    def _begin(self, n: Node, kind: SequenceKind, gate: str, steps: list[tuple[str, tuple[object, ...]]], origin: object) -> None:
        n.seq = SeqRun(kind, gate, self.t, steps, [], self.t + self.timing.seq_step, origin=origin)

    def _run_step(self, n: Node, sq: SeqRun, op: str, args: tuple[object, ...]) -> str | None:
        name = n.name
        if op in self.step_failures[name]:
            self.step_failures[name].discard(op)
            return "injected failure"
        dn = self.drbd.n[name]
        match op:
            case "drbd_primary":
                if dn.role is Role.PRIMARY:
                    return None
                was_disk = dn.disk
                force = bool(args[0])
                err = self.drbd.promote(name, force)
                if err is None:
                    sq.undo.append("drbd_primary")
                    self._oracle_promoted(n, self.nodes[self._other(name)], was_disk, force)
                return err
            case "mount":
                if dn.role is not Role.PRIMARY:
                    return "DRBD not Primary"
                if not n.mounted:
                    n.mounted = True
                    sq.undo.append("mount")
                return None
            case "ip":
                if not n.ip:
                    n.ip = True
                    sq.undo.append("ip")
                return None
            case "vm_start":
                # all VMs of the step start together (restores first), as the executor runs them in parallel
                plans = sorted(args, key=lambda p: p.restore is None)  # type: ignore[attr-defined]
                for plan in plans:
                    assert isinstance(plan, VmPlan)
                    was = n.vms[plan.name].state
                    err = self._start_vm(n, plan)
                    if err is not None:
                        return err
                    if was is not VmState.RUNNING and sq.kind is SequenceKind.PROMOTE:
                        sq.undo.append(plan.name)
                return None
            case "vm_down":
                vm_name, token = args
                assert isinstance(vm_name, str)
                self._save_vm(n, vm_name, token if isinstance(token, ImageToken) else None)
                return None
            case "vm_handover_save":
                grant_id, epoch = args     # every VM saved together, bound to the same data
                tok = ImageToken(ImageKind.HANDOVER, str(grant_id), epoch, self.tree.uuid(dn.head)) if n.mounted else None  # type: ignore[arg-type]
                for vm_name in self.vm_names:
                    self._save_vm(n, vm_name, tok)
                return None
            case "vm_forcestop_save":
                tok = ImageToken(ImageKind.FORCESTOP, None, n.state.durable.epoch, self.tree.uuid(dn.head))
                for vm_name in args:
                    assert isinstance(vm_name, str)
                    self._save_vm(n, vm_name, tok)
                return None
            case "ip_off":
                n.ip = False
                return None
            case "umount":
                n.mounted = False
                return None
            case "drbd_secondary":
                self.drbd.demote(name)
                return None
        raise AssertionError(op)

    def _images(self, n: Node) -> dict[str, tuple[ImageToken, bool]]:
        return self.tree.writes[self.drbd.n[n.name].head].images

    def _start_vm(self, n: Node, plan: VmPlan) -> str | None:
        if not n.mounted or self.drbd.n[n.name].role is not Role.PRIMARY:
            return "filesystem not mounted"
        vm = n.vms[plan.name]
        if vm.state is VmState.RUNNING:
            return None
        if plan.restore is not None:
            imgs = self._images(n)
            got = imgs.get(plan.name)
            if got is not None and got[0] == plan.restore and not got[1]:
                current = self.tree.uuid(self.drbd.n[n.name].head)
                new = dict(imgs)
                new[plan.name] = (got[0], True)      # renamed .consumed before the restore
                if self.write(n, app=False, images=new) is not None:
                    self.oracle.restored(self.t, n.name, plan.name, got[0], current, got[1])
        vm.state, vm.cause = VmState.RUNNING, StopCause.NONE
        return None

    def _save_vm(self, n: Node, name: str, token: ImageToken | None) -> None:
        vm = n.vms[name]
        if vm.state is not VmState.RUNNING:
            return
        if token is not None:
            new = dict(self._images(n))
            new[name] = (token, False)
            self.write(n, app=False, images=new)
        vm.state, vm.cause = VmState.STOPPED, StopCause.CLUSTER

    def _oracle_promoted(self, n: Node, peer: Node, was_disk: Disk, force: bool) -> None:
        ep = n.state.durable.episode
        operator = any(r.evidence is Evidence.OPERATOR and r.episode == ep for r in n.records)
        # the boot a device record confirmed off is gone (the peer may be back as a new boot, holding nothing)
        fenced_gone = any(r.evidence is Evidence.DEVICE and r.episode == ep and r.episode.peer_boot_id not in (None, peer.boot_id)
                          for r in n.records) and not peer.holds() and self.drbd.n[peer.name].role is not Role.PRIMARY
        accept = any(r.accept_data_loss and r.episode == ep for r in n.records)
        ann_peer = peer.state.published if peer.powered else None
        ann_me = n.state.published
        granted = (peer.powered and not peer.holds() and self.drbd.n[peer.name].role is not Role.PRIMARY
                   and ann_peer is not None and ann_peer.grant is not None and ann_peer.grant.grantee == n.name
                   and ann_me is not None and ann_me.ack == ann_peer.grant.grant_id)
        head = self.drbd.n[n.name].head
        missing = sorted(w for w in self.oracle.acked if not self.tree.contains(head, w))
        if accept and force:
            self.oracle.waive_data_loss()
            missing = []
        self.oracle.promoted(self.t, n.name, not peer.powered or fenced_gone, granted, operator, missing, was_disk, force and accept)

    def _promote_steps(self, a: Promote) -> list[tuple[str, tuple[object, ...]]]:
        steps: list[tuple[str, tuple[object, ...]]] = [("drbd_primary", (a.force,)), ("mount", ()), ("ip", ())]
        return steps + ([("vm_start", tuple(a.vms))] if a.vms else [])

    def _demote_steps(self, n: Node, a: Demote) -> list[tuple[str, tuple[object, ...]]]:
        steps: list[tuple[str, tuple[object, ...]]] = []
        if a.mode is DemoteMode.SAVE and a.grant is not None:
            steps.append(("vm_handover_save", (a.grant.grant_id, a.grant.epoch)))
        else:
            steps += [("vm_down", (vm_name, None)) for vm_name in self.vm_names]
        return [*steps, ("ip_off", ()), ("umount", ()), ("drbd_secondary", ())]
