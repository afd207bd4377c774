"""The pure mapping between the parts' records and the policy's facts, table by table."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from clever_cluster import policy as P
from clever_cluster.daemon import mapping as M
from clever_cluster.daemon.drbd.model import ConnState, DiskState, DrbdFacts, GenerationIds, Role, SafetyIssue, SafetyReport
from clever_cluster.daemon.gateway import GatewayFacts
from clever_cluster.daemon.heartbeat import model as hm
from clever_cluster.daemon.heartbeat.facts import LinkView, PeerState, PeerView
from clever_cluster.daemon.resources.base import ImageToken as ResToken
from clever_cluster.daemon.resources.vmmonitor import VmFacts, VmInfo
from clever_cluster.daemon.world import World
from clever_cluster.fencing import journal as fj
from clever_cluster.fencing import types as ft

NOW, WALL = 1000.0, 1_700_000_000.0
GI = GenerationIds("6B3A1F4C2D8E9A71", "0", ("0", "0"), {})
DRBD = DrbdFacts(backend="drbd9", resource="r0", known=True, role=Role.PRIMARY, peer_role=Role.SECONDARY,
                 connection=ConnState.CONNECTED, connection_raw="Connected", disk=DiskState.UPTODATE, peer_disk=DiskState.UPTODATE,
                 generation=GI, settings=SafetyReport(()))


# --------------------------------------------------------------------------- DRBD


@pytest.mark.parametrize("conn, expect", [
    (ConnState.CONNECTED, P.Conn.CONNECTED), (ConnState.STANDALONE, P.Conn.STANDALONE),
    (ConnState.CONNECTING, P.Conn.CONNECTING), (ConnState.NETWORKFAILURE, P.Conn.CONNECTING),
    (ConnState.DISCONNECTING, P.Conn.CONNECTING), (ConnState.UNCONFIGURED, P.Conn.UNKNOWN), (None, P.Conn.UNKNOWN),
])
def test_connection(conn: ConnState | None, expect: P.Conn) -> None:
    assert M.connection(conn) is expect


@pytest.mark.parametrize("disk, expect", [
    (DiskState.UPTODATE, P.Disk.UP_TO_DATE), (DiskState.CONSISTENT, P.Disk.CONSISTENT), (DiskState.OUTDATED, P.Disk.OUTDATED),
    (DiskState.INCONSISTENT, P.Disk.INCONSISTENT), (DiskState.DISKLESS, P.Disk.DISKLESS), (DiskState.FAILED, P.Disk.FAILED),
    (DiskState.DUNKNOWN, P.Disk.UNKNOWN), (DiskState.ATTACHING, P.Disk.UNKNOWN), (DiskState.NEGOTIATING, P.Disk.UNKNOWN),
    (None, P.Disk.UNKNOWN),
])
def test_disk(disk: DiskState | None, expect: P.Disk) -> None:
    assert M.disk(disk) is expect


@pytest.mark.parametrize("changes, expect", [
    ({"suspended": frozenset()}, P.Suspended.NO),
    ({"suspended": frozenset({"fencing"})}, P.Suspended.FENCING),
    ({"suspended": frozenset({"user"})}, P.Suspended.USER),
    ({"suspended": frozenset({"no-data"})}, P.Suspended.OTHER),
    # 8.4 does not say why; a disconnected Primary with resource-and-stonith and the peer unknown is fencing
    ({"suspended": frozenset({"unspecified"}), "connection": ConnState.CONNECTING, "peer_disk": DiskState.DUNKNOWN,
      "settings": SafetyReport((), fencing="resource-and-stonith")}, P.Suspended.FENCING),
    ({"suspended": frozenset({"unspecified"})}, P.Suspended.OTHER),
])
def test_suspended(changes: dict[str, Any], expect: P.Suspended) -> None:
    assert M.suspended(dataclasses.replace(DRBD, **changes)) is expect


def test_drbd_facts_known_and_unknown() -> None:
    d = M.drbd(DRBD, pending=True, connected_since=5.0)
    assert (d.role, d.peer_role, d.connection, d.disk, d.peer_disk) == (P.Role.PRIMARY, P.Role.SECONDARY, P.Conn.CONNECTED,
                                                                       P.Disk.UP_TO_DATE, P.Disk.UP_TO_DATE)
    assert d.data_uuid == "6B3A1F4C2D8E9A70" and d.config_safe is True and d.fence_peer_pending and d.connected_since == 5.0
    # Unknown is never "Secondary" or "UpToDate"; the handler still counts as pending.
    u = M.drbd(DrbdFacts.unknown("drbd9", "r0", "events2 exited"), pending=True, connected_since=None)
    assert (u.role, u.connection, u.disk, u.config_safe, u.data_uuid) == (P.Role.UNKNOWN, P.Conn.UNKNOWN, P.Disk.UNKNOWN, None, "")
    assert u.fence_peer_pending
    unsafe = M.drbd(dataclasses.replace(DRBD, settings=SafetyReport((SafetyIssue("net.protocol", "A", "C", "running"),))),
                    pending=False, connected_since=None)
    assert unsafe.config_safe is False and "net.protocol is A" in unsafe.config_problem
    assert M.drbd(dataclasses.replace(DRBD, settings=None), pending=False, connected_since=None).config_safe is None


def test_connected_since_is_when_drbd_became_connected() -> None:
    clock = iter([1.0, 2.0, 3.0, 4.0, 5.0, 6.0]).__next__
    w = World("r0", (), clock=clock)
    down = dataclasses.replace(DRBD, connection=ConnState.CONNECTING)
    w.on_drbd(down)
    assert w.connected_since is None
    w.on_drbd(DRBD)
    assert w.connected_since == 3.0  # the clock's third reading (World reads one at start)
    w.on_drbd(dataclasses.replace(DRBD, out_of_sync_kib=4))
    assert w.connected_since == 3.0  # still the same connection
    w.on_drbd(down)
    w.on_drbd(DRBD)
    assert w.connected_since == 6.0


def test_a_record_older_than_drbds_last_connection_does_not_count() -> None:
    """The runtime supplies drbd.connected_since; the policy voids a record confirmed before it."""
    ep = P.LossEpisode("node2", 7, "b2", 3)
    rec = fj.FenceRecord(M.episode_to_fencing(ep), "node2", 7, "device", 1, ("bmc",), ("off",), WALL - 20, WALL - 10, "node1", "b1")
    base = snapshot(records=(rec,))
    facts = M.build_facts(base)
    assert P.view.record_for(facts, ep) is not None
    later = M.build_facts(dataclasses.replace(base, connected_since=NOW - 5))  # DRBD connected after the record
    assert P.view.record_for(later, ep) is None


# --------------------------------------------------------------------------- VMs


@pytest.mark.parametrize("state, reason, by_cluster, expect", [
    ("running", 1, False, (P.VmState.RUNNING, P.StopCause.NONE)),
    ("paused", 1, False, (P.VmState.PAUSED, P.StopCause.NONE)),
    ("crashed", 0, False, (P.VmState.CRASHED, P.StopCause.CRASH)),
    ("shutoff", M.SHUTOFF_CRASHED, False, (P.VmState.STOPPED, P.StopCause.CRASH)),
    ("shutoff", M.SHUTOFF_FAILED, True, (P.VmState.STOPPED, P.StopCause.CRASH)),
    ("shutoff", M.SHUTOFF_SAVED, True, (P.VmState.STOPPED, P.StopCause.CLUSTER)),
    ("shutoff", M.SHUTOFF_SAVED, False, (P.VmState.STOPPED, P.StopCause.OUTSIDE)),
    ("shutoff", M.SHUTOFF_DESTROYED, False, (P.VmState.STOPPED, P.StopCause.OUTSIDE)),
    ("shutoff", 0, False, (P.VmState.STOPPED, P.StopCause.NONE)),
    ("missing", -1, False, (P.VmState.STOPPED, P.StopCause.NONE)),
    ("nostate", 0, False, (P.VmState.UNKNOWN, P.StopCause.NONE)),
])
def test_vm(state: str, reason: int, by_cluster: bool, expect: tuple[P.VmState, P.StopCause]) -> None:
    info = VmInfo("plc1", state, reason)
    assert (M.vm_state(state), M.stop_cause(info, by_cluster)) == expect


def test_vms_unknown_while_libvirt_is_unreachable_and_images_mapped() -> None:
    tok = ResToken(origin="forcestop", id="fs-1", epoch="3:node1", data_uuid="AB")
    facts = VmFacts(True, (VmInfo("plc1", "shutoff", M.SHUTOFF_SAVED), VmInfo("plc2", "running", 1)), 1.0)
    out = M.vms(facts, {"plc1": tok}, frozenset())
    assert out[0].image == P.ImageToken(P.ImageKind.FORCESTOP, None, P.Epoch(3, "node1"), "AB") and out[1].image is None
    gone = M.vms(dataclasses.replace(facts, connected=False), {}, frozenset())
    assert {v.state for v in gone} == {P.VmState.UNKNOWN}


def test_a_crash_is_counted_once_per_crash() -> None:
    w = World("r0", ())
    crashed: list[str] = []
    w.on_crash = crashed.append
    run = VmFacts(True, (VmInfo("plc1", "running", 1),), 1.0)
    dead = VmFacts(True, (VmInfo("plc1", "shutoff", M.SHUTOFF_CRASHED),), 2.0)
    for f in (run, dead, dead, run, dead):
        w.on_vms(f)
    assert crashed == ["plc1", "plc1"]
    w.stopped_by_cluster.add("plc1")
    w.on_vms(VmFacts(True, (VmInfo("plc1", "shutoff", M.SHUTOFF_SAVED),), 3.0))
    assert crashed == ["plc1", "plc1"]


# --------------------------------------------------------------------------- identities and tokens


@pytest.mark.parametrize("ep", [P.LossEpisode("node2", 5, "b", 2), P.LossEpisode("node2", None, None, 1)])
def test_episode_round_trip(ep: P.LossEpisode) -> None:
    assert M.episode_from_fencing(M.episode_to_fencing(ep)) == ep
    assert M.episode_to_fencing(P.LossEpisode("node2", None, None, 1)) == ft.Episode("node2", 0, "", 1)


@pytest.mark.parametrize("tok", [P.ImageToken(P.ImageKind.HANDOVER, "node1-7-2", P.Epoch(4, "node1"), "AB"),
                                 P.ImageToken(P.ImageKind.FORCESTOP, None, P.Epoch(4, "node1"), "AB")])
def test_image_token_round_trip(tok: P.ImageToken) -> None:
    assert M.image_from_resources(M.image_to_resources(tok)) == tok


def test_grant_round_trip_and_epochs() -> None:
    g = P.Grant("node1-7-2", P.GrantKind.HANDOVER, "node1", "node2", 7, P.Epoch(4, "node1"), 9)
    wire = M.grant_to_wire(g)
    assert wire.kind == "grant" and wire.grantee_incarnation == 9
    assert M.grant_from_wire(wire, "node1") == g
    assert M.epoch_from_wire(None) == P.Epoch(0, "") and M.epoch_to_wire(P.Epoch(0, "")) is None


def test_fence_record_times_and_evidence() -> None:
    rec = fj.FenceRecord(ft.Episode("node2", 7, "b", 3), "node2", 7, "operator", None, (), ("typed",), WALL - 30, WALL - 20,
                         "node1", "b1", operator="root", accept_data_loss=True)
    r = M.fence_record(rec, NOW, WALL)
    assert r.evidence is P.Evidence.OPERATOR and r.accept_data_loss and r.confirmed_at == NOW - 20
    assert r.episode == P.LossEpisode("node2", 7, "b", 3)


def test_intent_bans_in_monotonic_time() -> None:
    rec = hm.AdminIntent(version=4, target_role="stopped", maintenance=True, standby=("node2",), unblock_seq=2, fence_seq=1,
                         bans=(hm.Ban(node="node1", until=WALL + 60), hm.Ban(node="node2")))
    i = M.intent(rec, NOW, WALL)
    assert i.target_role is P.TargetRole.STOPPED and i.maintenance and i.standby == {"node2"}
    assert i.bans == (P.Ban("node1", NOW + 60), P.Ban("node2", None)) and (i.unblock_seq, i.fence_seq) == (2, 1)


# --------------------------------------------------------------------------- the peer


def view(report: hm.NodeReport | None, **kw: Any) -> PeerView:
    base: dict[str, Any] = dict(
        name="node2", state=PeerState.ALIVE, incarnation=11, boot_id="b2", machine_id="m2", protocol=2, peer_max_version=2,
        sending_version=2, last_heard=NOW - 0.05, silent_for=0.05, report=report, report_age=0.05, announce=None,
        restart_expected_by=None, settings_fingerprint="fp", peer_settings_fingerprint="fp", intent=hm.AdminIntent(),
        intent_acknowledged=True, intent_superseded=None,
        links=(LinkView("hb0", True, NOW - 0.05, 0.05, 0.0, 0.0, None, None, "key_file"),
               LinkView("hb1", False, None, None, None, None, None, None, None)),
        restarts=0, longest_silence=0.1, drops={}, unconfirmed=0, overtaken=0)
    base.update(kw)
    return PeerView(**base)


ACTIVE = hm.NodeReport(
    phase="PRIMARY", epoch=hm.Epoch(counter=3, node="node2"), gateway_score=2, eligible=True,
    resources=hm.ResourceSummary(drbd=hm.DrbdReport(role="Primary", disk="UpToDate", data_uuid="AB"), mounted=True, ip=True,
                                 vms=(hm.VmReport(name="plc1", state="running", fail_count=2), hm.VmReport(name="plc2", state="shutoff"))),
    grant=hm.GrantToken(grant_id="node2-11-1", kind="grant", grantee="node1", grantor_incarnation=11,
                        epoch=hm.Epoch(counter=3, node="node2"), grantee_incarnation=5),
    grant_reply=hm.GrantReply(grant_id="node1-5-2", accepted=False), outdate_request=True,
    fencing=hm.FencingReport(fenced=hm.FencedIncarnation(node="node1", incarnation=4, episode=hm.EpisodeId(
        peer="node1", peer_incarnation=4, peer_boot_id="b1", counter=2))),
)


def test_peer_report() -> None:
    r = M.peer_report(view(ACTIVE), NOW)
    assert r is not None
    assert (r.node, r.incarnation, r.boot_id, r.phase, r.epoch) == ("node2", 11, "b2", "PRIMARY", P.Epoch(3, "node2"))
    assert r.holds and r.drbd_primary and r.mounted and r.ip and r.vms_running == 1 and r.disk is P.Disk.UP_TO_DATE
    assert r.grant == P.Grant("node2-11-1", P.GrantKind.HANDOVER, "node2", "node1", 11, P.Epoch(3, "node2"), 5)
    assert r.ack is None and r.decline == "node1-5-2" and r.outdate_request
    assert r.fenced == (P.FencedIncarnation("node1", 4, "b1"),) and r.fail_counts == (("plc1", 2), ("plc2", 0))
    assert r.received_at == pytest.approx(NOW - 0.05) and not r.leaving and r.restarting_until is None
    both = dataclasses.replace(ACTIVE, grant_reply=hm.GrantReply(grant_id="g1", accepted=True), decline="g0")
    r2 = M.peer_report(view(both), NOW)
    assert r2 is not None and (r2.ack, r2.decline) == ("g1", "g0")


def test_peer_announcements() -> None:
    left = M.peer_report(view(hm.NodeReport(phase="SECONDARY"), state=PeerState.LEFT, announce=hm.Announce(kind="leaving")), NOW)
    assert left is not None and left.leaving
    rs = M.peer_report(view(hm.NodeReport(phase="PRIMARY"), state=PeerState.RESTARTING,
                            announce=hm.Announce(kind="restarting", expected=30), restart_expected_by=NOW + 29), NOW)
    assert rs is not None and rs.restarting_until == NOW + 29 and not rs.leaving


def test_peer_facts() -> None:
    pf = M.peer(view(ACTIVE), NOW, unauthenticated=False)
    assert [(ln.name, ln.age) for ln in pf.links] == [("hb0", pytest.approx(0.05)), ("hb1", None)]
    assert M.peer(view(None), NOW, False).report is None
    assert M.peer(view(None, state=PeerState.INCOMPATIBLE), NOW, True).incompatible
    assert M.peer(None, NOW, True, ("hb0",)).links == (P.Link("hb0", None),)


# --------------------------------------------------------------------------- whole snapshots, and back


def snapshot(**kw: Any) -> M.Snapshot:
    base: dict[str, Any] = dict(
        now=NOW, wall=WALL, local=M.LocalIdentity("node1", 5, "b1", "m1", "fp"), peer_name="node2", peer=view(ACTIVE),
        unauthenticated=False, gateway=GatewayFacts(1, 1, 1, NOW, NOW - 10, 1, 5, ()), fresh=None, drbd=DRBD, connected_since=None,
        fence_peer_pending=False, mounted=True, ip=True, vms=VmFacts(True, (VmInfo("plc1", "running", 1),), NOW), images={},
        stopped_by_cluster=frozenset(), records=(), attempt=None, failures=0, peer_reported_off=False,
        fail_counts=(("plc1", 2, WALL - 100),), intent=hm.AdminIntent(), sequence=None, last_result=None)
    base.update(kw)
    return M.Snapshot(**base)


def test_build_facts() -> None:
    f = M.build_facts(snapshot(stalled=True, random_draw=0.25, shutting_down=True))
    assert f.now == NOW and f.stalled and f.random_draw == 0.25 and f.local.shutting_down
    assert f.local == P.Local("node1", 5, "b1", "m1", shutting_down=True, settings_fingerprint="fp")
    assert f.gateway.score == 1 and f.resources.mounted and f.resources.ip
    assert f.fail_counts == (P.FailCount("plc1", 2, NOW - 100),)
    other = fj.FenceRecord(ft.Episode("node9", 1, "x", 1), "node9", 1, "device", 1, (), (), WALL, WALL, "node1", "b1")
    assert M.build_facts(snapshot(records=(other,))).fencing.records == ()  # only records about our peer


def test_node_report_carries_the_announcement() -> None:
    s = snapshot()
    g = P.Grant("node1-5-1", P.GrantKind.YIELD, "node1", "node2", 5, P.Epoch(3, "node2"), 11)
    ann = P.Announcement(P.Phase.SECONDARY, P.Epoch(3, "node2"), True, grant=g, ack=None, decline="node2-11-1",
                         outdate_request=True, leaving=True, fail_counts=(("plc1", 2),))
    r = M.node_report(ann, s, dict(ann.fail_counts), None, P.LossEpisode("node2", None, None, 4), False)
    assert r.phase == "SECONDARY" and r.epoch == hm.Epoch(counter=3, node="node2") and r.eligible
    assert r.grant is not None and r.grant.kind == "yield" and r.grant.grantee_incarnation == 11
    assert r.grant_reply == hm.GrantReply(grant_id="node2-11-1", accepted=False) and r.decline is None
    assert r.outdate_request and r.leaving and r.resources.vms[0].fail_count == 2
    assert r.resources.drbd.role == "Primary" and r.resources.drbd.data_uuid == "6B3A1F4C2D8E9A70"
    assert r.fencing.open_episode == hm.EpisodeId(peer="node2", peer_incarnation=0, peer_boot_id="", counter=4)
    # Round trip through the peer's mapping.
    back = M.peer_report(view(r), NOW)
    assert back is not None and back.grant == dataclasses.replace(g, grantor="node2") and back.decline == "node2-11-1"
    starting = M.node_report(None, s, {}, None, None, False)
    assert starting.phase == "STARTING" and starting.eligible is False
