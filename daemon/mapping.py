"""Pure mapping between the parts' records and the policy's facts (INTEGRATION.md section 4).

:func:`build_facts` turns one :class:`Snapshot` (the latest value of every
observer, taken at the start of a cycle) into ``policy.Facts``; the helpers
below map one record each and are table-tested in
``tests/runtime/test_mapping.py``. :func:`node_report` goes the other way: the
policy's announcement plus what this node observes, as the heartbeat's
``NodeReport``.

Invariants:
- No I/O, no clock, no randomness: time comes in the snapshot (``now``
  monotonic, ``wall`` wall clock); the same snapshot gives the same facts.
- "Unknown" stays unknown: an observer without data maps to ``None`` or an
  ``UNKNOWN`` member, never to a guess ("Secondary", "UpToDate", 0).
- Persisted wall-clock times (fence records, fail counts, ban expiry) are
  converted to the monotonic timebase of ``now`` here and nowhere else.
- An episode the policy opened before the peer was ever heard (no
  incarnation, no boot id) maps to the fencing journal's episode with 0 and
  "" and back; real incarnations are never 0 and boot ids never empty.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from clever_cluster import policy as P
from clever_cluster.fencing import journal as fj
from clever_cluster.fencing import types as ft

from .drbd.model import ConnState, DiskState, DrbdFacts
from .drbd.model import Role as DrbdRole
from .fence_peer import fencing_suspended
from .gateway import GatewayFacts
from .heartbeat import model as hm
from .heartbeat.facts import PeerState, PeerView
from .resources.base import ImageToken as ResImageToken
from .resources.vmmonitor import VmFacts, VmInfo

# libvirt's VIR_DOMAIN_SHUTOFF_* reasons (libvirt-domain.h)
SHUTOFF_SHUTDOWN, SHUTOFF_DESTROYED, SHUTOFF_CRASHED, SHUTOFF_MIGRATED, SHUTOFF_SAVED, SHUTOFF_FAILED = 1, 2, 3, 4, 5, 6
VM_STATE = {
    "running": P.VmState.RUNNING, "blocked": P.VmState.RUNNING, "shutdown": P.VmState.RUNNING,  # still active
    "paused": P.VmState.PAUSED, "pmsuspended": P.VmState.PAUSED,
    "shutoff": P.VmState.STOPPED, "missing": P.VmState.STOPPED,
    "crashed": P.VmState.CRASHED,
}


@dataclasses.dataclass(frozen=True)
class LocalIdentity:
    node: str
    incarnation: int
    boot_id: str
    machine_id: str
    fingerprint: str


@dataclasses.dataclass(frozen=True)
class Snapshot:
    """Everything one decision reads, as the observers last reported it."""

    now: float
    wall: float
    local: LocalIdentity
    peer_name: str
    peer: PeerView | None
    unauthenticated: bool
    gateway: GatewayFacts
    fresh: P.FreshProbe | None
    drbd: DrbdFacts
    connected_since: float | None
    fence_peer_pending: bool
    mounted: bool
    ip: bool
    vms: VmFacts
    images: Mapping[str, ResImageToken]
    stopped_by_cluster: frozenset[str]
    records: tuple[fj.FenceRecord, ...]
    attempt: P.FenceAttempt | None
    failures: int
    peer_reported_off: bool
    fail_counts: tuple[tuple[str, int, float], ...]  # (vm, count, wall time of the last failure)
    intent: hm.AdminIntent
    sequence: P.Sequence | None
    last_result: P.SequenceResult | None
    shutting_down: bool = False
    stalled: bool = False
    random_draw: float = 0.0


# --------------------------------------------------------------------------- time


def to_mono(wall_time: float, now: float, wall: float) -> float:
    """A persisted wall-clock time in the monotonic timebase of ``now``."""
    return now - (wall - wall_time)


def to_wall(mono: float, now: float, wall: float) -> float:
    return wall - (now - mono)


# --------------------------------------------------------------------------- identities


def epoch_from_wire(e: hm.Epoch | None) -> P.Epoch:
    return P.Epoch(0, "") if e is None else P.Epoch(e.counter, e.node)


def epoch_to_wire(e: P.Epoch) -> hm.Epoch | None:
    return None if e == P.Epoch(0, "") else hm.Epoch(counter=e.counter, node=e.node)


def episode_to_fencing(ep: P.LossEpisode) -> ft.Episode:
    return ft.Episode(ep.peer, ep.peer_incarnation or 0, ep.peer_boot_id or "", ep.counter)


def episode_from_fencing(ep: ft.Episode) -> P.LossEpisode:
    return P.LossEpisode(ep.peer, ep.peer_incarnation or None, ep.peer_boot_id or None, ep.counter)


def grant_to_wire(g: P.Grant) -> hm.GrantToken:
    return hm.GrantToken(grant_id=g.grant_id, kind="grant" if g.kind is P.GrantKind.HANDOVER else "yield", grantee=g.grantee,
                         grantor_incarnation=g.grantor_incarnation, epoch=hm.Epoch(counter=g.epoch.counter, node=g.epoch.node),
                         grantee_incarnation=g.grantee_incarnation)


def grant_from_wire(t: hm.GrantToken, grantor: str) -> P.Grant:
    return P.Grant(t.grant_id, P.GrantKind.HANDOVER if t.kind == "grant" else P.GrantKind.YIELD, grantor, t.grantee,
                   t.grantor_incarnation, P.Epoch(t.epoch.counter, t.epoch.node), t.grantee_incarnation)


def image_from_resources(t: ResImageToken) -> P.ImageToken:
    counter, _, node = t.epoch.partition(":")
    epoch = P.Epoch(int(counter), node) if counter.isdigit() else P.Epoch(0, "")
    if t.origin == "handover":
        return P.ImageToken(P.ImageKind.HANDOVER, t.id, epoch, t.data_uuid)
    return P.ImageToken(P.ImageKind.FORCESTOP, None, epoch, t.data_uuid)


def image_to_resources(t: P.ImageToken, forcestop_id: str = "forcestop") -> ResImageToken:
    epoch = f"{t.epoch.counter}:{t.epoch.node}"
    if t.kind is P.ImageKind.HANDOVER:
        return ResImageToken(origin="handover", id=t.handover_id or "?", epoch=epoch, data_uuid=t.data_uuid or "?")
    return ResImageToken(origin="forcestop", id=forcestop_id, epoch=epoch, data_uuid=t.data_uuid or "?")


# --------------------------------------------------------------------------- DRBD


_CONN = {ConnState.CONNECTED: P.Conn.CONNECTED, ConnState.STANDALONE: P.Conn.STANDALONE, ConnState.UNCONFIGURED: P.Conn.UNKNOWN}
_DISK = {DiskState.UPTODATE: P.Disk.UP_TO_DATE, DiskState.CONSISTENT: P.Disk.CONSISTENT, DiskState.OUTDATED: P.Disk.OUTDATED,
         DiskState.INCONSISTENT: P.Disk.INCONSISTENT, DiskState.DISKLESS: P.Disk.DISKLESS, DiskState.FAILED: P.Disk.FAILED}
_ROLE = {DrbdRole.PRIMARY: P.Role.PRIMARY, DrbdRole.SECONDARY: P.Role.SECONDARY}


def disk(d: DiskState | None) -> P.Disk:
    """Attaching, Detaching, Negotiating and DUnknown are all "not known to be usable"."""
    return _DISK.get(d, P.Disk.UNKNOWN) if d is not None else P.Disk.UNKNOWN


def disk_word(text: str | None) -> P.Disk:
    try:
        return disk(DiskState(text)) if text else P.Disk.UNKNOWN
    except ValueError:
        return P.Disk.UNKNOWN


def connection(c: ConnState | None) -> P.Conn:
    if c is None:
        return P.Conn.UNKNOWN
    return _CONN.get(c, P.Conn.CONNECTING)


def suspended(f: DrbdFacts) -> P.Suspended:
    if not f.known or not f.suspended:
        return P.Suspended.NO
    if "fencing" in f.suspended or fencing_suspended(f):
        return P.Suspended.FENCING
    if "user" in f.suspended:
        return P.Suspended.USER
    return P.Suspended.OTHER


def drbd(f: DrbdFacts, *, pending: bool, connected_since: float | None) -> P.Drbd:
    if not f.known:
        return P.Drbd(P.Role.UNKNOWN, P.Role.UNKNOWN, P.Conn.UNKNOWN, P.Disk.UNKNOWN, P.Disk.UNKNOWN, "",
                      fence_peer_pending=pending, connected_since=connected_since)
    problems = "; ".join(i.describe() for i in f.settings.issues) if f.settings is not None else ""
    return P.Drbd(
        role=_ROLE.get(f.role, P.Role.UNKNOWN), peer_role=_ROLE.get(f.peer_role, P.Role.UNKNOWN),
        connection=connection(f.connection), disk=disk(f.disk), peer_disk=disk(f.peer_disk),
        data_uuid=f.generation.data_uuid if f.generation is not None else "",
        split_brain=f.split_brain, suspended=suspended(f), fence_peer_pending=pending,
        config_safe=None if f.settings is None else f.settings.safe, config_problem=problems,
        connected_since=connected_since,
    )


# --------------------------------------------------------------------------- VMs


def vm_state(state: str) -> P.VmState:
    return VM_STATE.get(state, P.VmState.UNKNOWN)


def stop_cause(info: VmInfo, stopped_by_cluster: bool) -> P.StopCause:
    st = vm_state(info.state)
    if st is P.VmState.CRASHED:
        return P.StopCause.CRASH
    if st is not P.VmState.STOPPED:
        return P.StopCause.NONE
    if info.state == "shutoff" and info.reason in (SHUTOFF_CRASHED, SHUTOFF_FAILED):
        return P.StopCause.CRASH
    if stopped_by_cluster:
        return P.StopCause.CLUSTER
    if info.state == "shutoff" and info.reason in (SHUTOFF_SHUTDOWN, SHUTOFF_DESTROYED, SHUTOFF_SAVED, SHUTOFF_MIGRATED):
        return P.StopCause.OUTSIDE
    return P.StopCause.NONE


def vms(facts: VmFacts, images: Mapping[str, ResImageToken], stopped_by_cluster: frozenset[str]) -> tuple[P.Vm, ...]:
    out = []
    for v in facts.vms:
        img = images.get(v.name)
        out.append(P.Vm(v.name, vm_state(v.state) if facts.connected else P.VmState.UNKNOWN,
                        stop_cause(v, v.name in stopped_by_cluster) if facts.connected else P.StopCause.NONE,
                        image_from_resources(img) if img is not None else None))
    return tuple(out)


def is_crash(info: VmInfo) -> bool:
    """A state libvirt reports only after a crash or a failure (counted against the VM)."""
    return info.state == "crashed" or (info.state == "shutoff" and info.reason in (SHUTOFF_CRASHED, SHUTOFF_FAILED))


# --------------------------------------------------------------------------- fencing


def fence_record(r: fj.FenceRecord, now: float, wall: float) -> P.FenceRecord:
    return P.FenceRecord(episode_from_fencing(r.episode),
                         P.Evidence.OPERATOR if r.kind == "operator" else P.Evidence.DEVICE,
                         "", to_mono(r.confirmed, now, wall), accept_data_loss=r.accept_data_loss)


def fenced_incarnation(r: fj.FenceRecord) -> hm.FencedIncarnation:
    e = r.episode
    return hm.FencedIncarnation(node=r.target, incarnation=r.target_incarnation,
                                episode=hm.EpisodeId(peer=e.peer, peer_incarnation=e.peer_incarnation,
                                                     peer_boot_id=e.peer_boot_id, counter=e.counter))


# --------------------------------------------------------------------------- intent


def intent(rec: hm.AdminIntent, now: float, wall: float) -> P.Intent:
    return P.Intent(
        version=rec.version,
        target_role=P.TargetRole.STOPPED if rec.target_role == "stopped" else P.TargetRole.STARTED,
        bans=tuple(P.Ban(b.node, None if b.until is None else to_mono(b.until, now, wall)) for b in rec.bans),
        standby=frozenset(rec.standby), maintenance=rec.maintenance,
        unblock_seq=rec.unblock_seq, fence_seq=rec.fence_seq,
    )


# --------------------------------------------------------------------------- the peer


def vms_running(rs: hm.ResourceSummary) -> int:
    return sum(1 for v in rs.vms if vm_state(v.state) in (P.VmState.RUNNING, P.VmState.PAUSED))


def peer_report(v: PeerView, now: float) -> P.PeerReport | None:
    r = v.report
    if r is None or v.incarnation is None:
        return None
    rs = r.resources
    reply = r.grant_reply
    ack = reply.grant_id if reply is not None and reply.accepted else None
    decline = r.decline or (reply.grant_id if reply is not None and not reply.accepted else None)
    announce = v.announce
    fenced: tuple[P.FencedIncarnation, ...] = ()
    if r.fencing.fenced is not None:
        f = r.fencing.fenced
        fenced = (P.FencedIncarnation(f.node, f.incarnation, f.episode.peer_boot_id or None),)
    return P.PeerReport(
        node=v.name, incarnation=v.incarnation, boot_id=v.boot_id or "", machine_id=v.machine_id or "",
        received_at=now - (v.report_age or 0.0), phase=r.phase, epoch=epoch_from_wire(r.epoch),
        data_uuid=rs.drbd.data_uuid or "", disk=disk_word(rs.drbd.disk), drbd_primary=rs.drbd.role == "Primary",
        mounted=bool(rs.mounted), ip=bool(rs.ip), vms_running=vms_running(rs), gateway_score=r.gateway_score,
        eligible=bool(r.eligible), grant=grant_from_wire(r.grant, v.name) if r.grant is not None else None,
        ack=ack, decline=decline, outdate_request=r.outdate_request,
        leaving=r.leaving or (announce is not None and announce.kind == "leaving"),
        restarting_until=v.restart_expected_by if announce is not None and announce.kind == "restarting" else None,
        fenced=fenced, fail_counts=tuple((vm.name, vm.fail_count) for vm in rs.vms),
        settings_fingerprint=v.peer_settings_fingerprint or "",
    )


def peer(v: PeerView | None, now: float, unauthenticated: bool, link_names: tuple[str, ...] = ()) -> P.PeerFacts:
    if v is None:
        return P.PeerFacts(tuple(P.Link(n, None) for n in link_names), None, unauthenticated=unauthenticated)
    links = tuple(P.Link(ln.name, None if ln.last_heard is None else max(0.0, now - ln.last_heard)) for ln in v.links)
    return P.PeerFacts(links, peer_report(v, now), incompatible=v.state is PeerState.INCOMPATIBLE, unauthenticated=unauthenticated)


# --------------------------------------------------------------------------- all of it


def fail_counts(counts: tuple[tuple[str, int, float], ...], now: float, wall: float) -> tuple[P.FailCount, ...]:
    return tuple(P.FailCount(vm, n, to_mono(at, now, wall)) for vm, n, at in counts if n > 0)


def build_facts(s: Snapshot) -> P.Facts:
    return P.Facts(
        now=s.now,
        local=P.Local(s.local.node, s.local.incarnation, s.local.boot_id, s.local.machine_id,
                      shutting_down=s.shutting_down, settings_fingerprint=s.local.fingerprint),
        peer=peer(s.peer, s.now, s.unauthenticated),
        gateway=P.Gateway(s.gateway.stable_score, s.fresh),
        drbd=drbd(s.drbd, pending=s.fence_peer_pending, connected_since=s.connected_since),
        resources=P.Resources(s.mounted, s.ip, vms(s.vms, s.images, s.stopped_by_cluster)),
        intent=intent(s.intent, s.now, s.wall),
        fencing=P.Fencing(tuple(fence_record(r, s.now, s.wall) for r in s.records if r.target == s.peer_name),
                          s.attempt, s.failures, s.peer_reported_off),
        fail_counts=fail_counts(s.fail_counts, s.now, s.wall),
        sequence=s.sequence, last_result=s.last_result, stalled=s.stalled, random_draw=s.random_draw,
    )


# --------------------------------------------------------------------------- the other way: what we publish


def node_report(ann: P.Announcement | None, s: Snapshot, counts: Mapping[str, int], latest_fence: fj.FenceRecord | None,
                open_episode: P.LossEpisode | None, fence_running: bool) -> hm.NodeReport:
    """The heartbeat's report: the policy's announcement plus this node's observations."""
    f = s.drbd
    gi = f.generation
    summary = hm.ResourceSummary(
        drbd=hm.DrbdReport(role=f.role.value if f.known else None, disk=f.disk.value if f.known and f.disk else None,
                           peer_disk=f.peer_disk.value if f.known and f.peer_disk else None,
                           connection=f.connection.value if f.known and f.connection else None,
                           data_uuid=gi.data_uuid if gi is not None else None, split_brain=f.split_brain),
        mounted=s.mounted, ip=s.ip,
        vms=tuple(hm.VmReport(name=v.name, state=v.state if s.vms.connected else "unknown", fail_count=counts.get(v.name, 0))
                  for v in s.vms.vms),
    )
    ep = None
    if open_episode is not None:
        e = episode_to_fencing(open_episode)
        ep = hm.EpisodeId(peer=e.peer, peer_incarnation=e.peer_incarnation, peer_boot_id=e.peer_boot_id, counter=e.counter)
    fencing = hm.FencingReport(open_episode=ep, fenced=fenced_incarnation(latest_fence) if latest_fence is not None else None,
                               fence_in_progress=fence_running)
    if ann is None:
        return hm.NodeReport(phase="STARTING", resources=summary, gateway_score=s.gateway.stable_score, eligible=False, fencing=fencing)
    reply = None
    decline = None
    if ann.ack is not None:
        reply = hm.GrantReply(grant_id=ann.ack, accepted=True)
        decline = ann.decline
    elif ann.decline is not None:
        reply = hm.GrantReply(grant_id=ann.decline, accepted=False)
    return hm.NodeReport(
        phase=ann.phase.value, epoch=epoch_to_wire(ann.epoch), resources=summary, gateway_score=s.gateway.stable_score,
        eligible=ann.eligible, grant=grant_to_wire(ann.grant) if ann.grant is not None else None, grant_reply=reply,
        fencing=fencing, decline=decline, outdate_request=ann.outdate_request, leaving=ann.leaving,
    )
