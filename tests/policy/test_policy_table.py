"""Table tests: one row per reason code (and more for the rules), each a
(state, facts) pair and what the decision must be. No mocks: the policy is a
pure function. A final test checks that every code of the enumeration has a
row here, so a new code cannot ship untested."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import pytest

from clever_cluster.policy import (
    AnswerFencePeer,
    Ban,
    BlockCause,
    Code,
    Conn,
    Decision,
    Demote,
    DemoteMode,
    DisconnectDrbd,
    Disk,
    Epoch,
    Evidence,
    FailCount,
    FenceAttempt,
    FencedIncarnation,
    FencePeer,
    FenceRecord,
    Fencing,
    FreshProbe,
    Gateway,
    Grant,
    GrantKind,
    ImageKind,
    ImageToken,
    Intent,
    LossEpisode,
    OutdateLocalDisk,
    Phase,
    ProbeGateway,
    Promote,
    ReconnectDrbd,
    Resources,
    ResumeIo,
    Role,
    SelfFence,
    Sequence,
    SequenceKind,
    SequenceResult,
    Settings,
    StartVm,
    StopCause,
    StopVm,
    Suspended,
    TargetRole,
    Vm,
    VmState,
    step,
)
from clever_cluster.policy.state import Block

from .policy_build import BOOT, E1, NOW, VMS_DOWN, VMS_UP, S, active_report, facts, lost, report, state, with_vol

EP = LossEpisode("node2", 1, "node2-boot1", 1)
DEV = FenceRecord(EP, Evidence.DEVICE, "uuid-node2", NOW - 1)
OPR = FenceRecord(EP, Evidence.OPERATOR, "operator", NOW - 1)
GRANT = Grant("node2-1-1", GrantKind.HANDOVER, "node2", "node1", 1, E1, 1)
YIELD = Grant("node2-1-1", GrantKind.YIELD, "node2", "node1", 1, E1, 1)
MY_YIELD = Grant("node1-1-1", GrantKind.YIELD, "node1", "node2", 1, E1, 1)
MY_GRANT = Grant("node1-1-1", GrantKind.HANDOVER, "node1", "node2", 1, E1, 1)
LOST_AT = NOW - 1.0
FRESH = FreshProbe(NOW - 0.1, 1)


def has(t: type, pred: Callable[[Any], bool] = lambda a: True) -> Callable[[Decision], bool]:
    return lambda d: any(isinstance(a, t) and pred(a) for a in d.actions)


def lacks(*ts: type) -> Callable[[Decision], bool]:
    return lambda d: not any(isinstance(a, ts) for a in d.actions)


def all_of(*ps: Callable[[Decision], bool]) -> Callable[[Decision], bool]:
    return lambda d: all(p(d) for p in ps)


NO_RESOURCE_ACTION = lacks(FencePeer, Promote, Demote, StartVm, StopVm)
epoch_bumped = lambda d: d.state.durable.epoch > E1  # noqa: E731
secondary = state(phase=Phase.SECONDARY)
lost_active = with_vol(state(episode=EP, episode_boot=BOOT), lost_at=LOST_AT)
lost_standby = with_vol(state(phase=Phase.SECONDARY, episode=EP, episode_boot=BOOT), lost_at=LOST_AT)
standby_lost_facts = dict(active=False, peer=active_report(received_at=NOW - 2))


# (id, state, facts, expected code, check)
CASES: list[tuple[str, Any, Any, Code, Callable[[Decision], bool]]] = [
    # S4
    ("starting", state(phase=Phase.STARTING, fresh_daemon=True, peer_heard_boot=None),
     facts(active=False, age=None, peer_facts={"report": None}, drbd={"disk": Disk.CONSISTENT, "connection": Conn.CONNECTING, "peer_role": Role.UNKNOWN}),
     Code.STARTING_WAITING_FOR_PEER, all_of(lacks(FencePeer, Promote), lambda d: d.phase is Phase.STARTING)),
    # S6
    ("maintenance", state(), lost(intent=Intent(maintenance=True)), Code.MAINTENANCE_OBSERVING,
     all_of(NO_RESOURCE_ACTION, lambda d: d.phase is Phase.MAINTENANCE)),
    ("clean stop in maintenance: leave everything as it is", state(), facts(intent=Intent(maintenance=True), local={"shutting_down": True}),
     Code.SHUTDOWN_READY, all_of(NO_RESOURCE_ACTION, lambda d: d.ready_to_stop and d.phase is Phase.MAINTENANCE)),
    ("maintenance answers the handler 1 when the peer is lost", state(), lost(intent=Intent(maintenance=True), drbd={"fence_peer_pending": True}),
     Code.MAINTENANCE_OBSERVING, all_of(NO_RESOURCE_ACTION, has(AnswerFencePeer, lambda a: a.exit_code == 1))),
    ("maintenance still outdates on request (S6)", secondary, facts(active=False, intent=Intent(maintenance=True), peer=active_report(outdate_request=True), drbd={"connection": Conn.CONNECTING}),
     Code.OUTDATING_LOCAL_DISK, all_of(NO_RESOURCE_ACTION, has(OutdateLocalDisk))),
    # stall
    ("stall", lost_active, lost(stalled=True), Code.STALL_REOBSERVING, lacks(FencePeer, Promote)),
    ("fresh daemon re-observes", state(fresh_daemon=True, episode=EP, episode_boot=BOOT), lost(), Code.STALL_REOBSERVING, lacks(FencePeer)),
    # blocks
    ("maintenance holds the loss clock: no head start in a fence race afterwards", lost_standby,
     lost(**standby_lost_facts, intent=Intent(maintenance=True)), Code.MAINTENANCE_OBSERVING,
     lambda d: d.state.lost_at is None and d.state.fence_not_before is None and d.state.observe_until > NOW),
    ("unblocked after a loss: the delays count afresh", with_vol(state(phase=Phase.BLOCKED, block=Block(BlockCause.SPLIT_BRAIN, "x"), episode=EP, episode_boot=BOOT), lost_at=LOST_AT - 30),
     lost(**standby_lost_facts, intent=Intent(unblock_seq=1)), Code.UNBLOCKED,
     lambda d: d.state.lost_at is None and d.state.observe_until > NOW),
    ("split brain", state(), facts(drbd={"split_brain": True, "connection": Conn.STANDALONE}), Code.BLOCKED_SPLIT_BRAIN,
     all_of(lambda d: d.state.durable.block is not None, NO_RESOURCE_ACTION)),
    ("unsafe config (S9)", secondary, facts(active=False, drbd={"config_safe": False, "config_problem": "protocol A"}),
     Code.BLOCKED_UNSAFE_DRBD_CONFIG, lambda d: d.phase is Phase.BLOCKED),
    ("misfence", state(), facts(fencing=Fencing(records=(FenceRecord(LossEpisode("node2", 1, "node2-boot1", 1), Evidence.DEVICE, "uuid-node2", NOW - 5),))),
     Code.BLOCKED_MISFENCE, lambda d: d.state.durable.block is not None and d.state.durable.block.cause is BlockCause.MISFENCE),
    ("unblock accepted", state(phase=Phase.BLOCKED, block=Block(BlockCause.SPLIT_BRAIN, "x")), facts(intent=Intent(unblock_seq=1)),
     Code.UNBLOCKED, lambda d: d.state.durable.block is None),
    ("unblock refused", state(phase=Phase.BLOCKED, block=Block(BlockCause.SPLIT_BRAIN, "x")),
     facts(intent=Intent(unblock_seq=1), drbd={"split_brain": True}), Code.UNBLOCK_REFUSED, lambda d: d.state.durable.block is not None),
    # S5
    ("unblock of a mis-fence refused while the boot wrongly confirmed off is still heard",
     state(phase=Phase.BLOCKED, block=Block(BlockCause.MISFENCE, "x")),
     facts(intent=Intent(unblock_seq=1), fencing=Fencing(records=(FenceRecord(LossEpisode("node2", 1, "node2-boot1", 1), Evidence.DEVICE, "uuid-node2", NOW - 5),))),
     Code.UNBLOCK_REFUSED, lambda d: d.state.durable.block is not None),
    ("unblock of a mis-fence accepted once that boot is gone", state(phase=Phase.BLOCKED, block=Block(BlockCause.MISFENCE, "x")),
     facts(intent=Intent(unblock_seq=1), peer=report(boot_id="node2-boot2"),
           fencing=Fencing(records=(FenceRecord(LossEpisode("node2", 1, "node2-boot1", 1), Evidence.DEVICE, "uuid-node2", NOW - 5),))),
     Code.UNBLOCKED, lambda d: d.state.durable.block is None),
    ("own boot fenced", state(), facts(peer=report(fenced=(FencedIncarnation("node1", 1, BOOT),))), Code.OWN_INCARNATION_FENCED,
     has(Demote, lambda a: a.mode is DemoteMode.STOP_NOW)),
    ("both active, lower epoch stops", state(), facts(peer=active_report(epoch=Epoch(5, "node2")), drbd={"peer_role": Role.PRIMARY}),
     Code.BOTH_ACTIVE_STOPPING, has(Demote, lambda a: a.mode is DemoteMode.STOP_NOW)),
    ("both active, higher epoch keeps", state(epoch=Epoch(7, "node1")), facts(peer=active_report(epoch=Epoch(5, "node2"))),
     Code.BOTH_ACTIVE_PEER_MUST_STOP, lacks(Demote)),
    # peer alive but unusable
    ("incompatible", state(), facts(age=None, peer_facts={"incompatible": True}), Code.PEER_INCOMPATIBLE, lacks(FencePeer, Demote)),
    ("key mismatch", secondary, facts(active=False, age=None, peer_facts={"unauthenticated": True}), Code.PEER_KEY_MISMATCH, lacks(FencePeer, Promote)),
    ("peer left", state(), lost(peer=report(leaving=True, received_at=NOW - 2)), Code.PEER_LEFT, lacks(FencePeer)),
    ("a restarted daemon remembers that the peer left cleanly: no fence", state(fresh_daemon=True, peer_left="node2-boot1"),
     facts(age=None, peer_facts={"report": None}, drbd={"connection": Conn.CONNECTING, "peer_role": Role.UNKNOWN, "peer_disk": Disk.OUTDATED}),
     Code.PEER_LEFT, lacks(FencePeer, ProbeGateway)),
    ("the peer's leaving is remembered until it is heard again", state(), facts(peer=report(leaving=True)), Code.NO_ACTION_PRIMARY,
     lambda d: d.state.durable.peer_left == "node2-boot1"),
    ("peer restarting", state(), lost(peer=report(restarting_until=NOW + 20)), Code.PEER_RESTARTING, lacks(FencePeer)),
    # §4.4
    ("silent peer, DRBD Connected: grace", lost_standby, lost(**standby_lost_facts, drbd={"connection": Conn.CONNECTED, "peer_role": Role.PRIMARY}),
     Code.PEER_SILENT_DRBD_CONNECTED, lacks(FencePeer)),
    ("silent standby daemon, DRBD Connected: no fence while active", lost_active, lost(drbd={"connection": Conn.CONNECTED}),
     Code.PEER_DAEMON_SILENT, lacks(FencePeer)),
    ("the active does not fence a lost peer whose disk DRBD shows Outdated", lost_active, lost(drbd={"peer_disk": Disk.OUTDATED}),
     Code.PEER_LOST_OUTDATED, lacks(FencePeer, ProbeGateway)),
    ("... unless the operator asks", with_vol(lost_active, probe_requested_at=NOW - 0.5),
     lost(drbd={"peer_disk": Disk.OUTDATED}, intent=Intent(fence_seq=1), gateway=Gateway(1, FRESH)), Code.PEER_LOST_FENCING, has(FencePeer)),
    ("S7: fresh probe unreachable", with_vol(lost_active, probe_requested_at=NOW - 0.5, fence_not_before=LOST_AT), lost(gateway=Gateway(1, FreshProbe(NOW - 0.2, 0))),
     Code.PEER_LOST_NO_GATEWAY, lacks(FencePeer)),
    ("S7: no data counts as unreachable", with_vol(lost_active, probe_requested_at=NOW - 0.5, fence_not_before=LOST_AT), lost(gateway=Gateway(1, FreshProbe(NOW - 0.2, None))),
     Code.PEER_LOST_NO_GATEWAY, lacks(FencePeer)),
    ("S7: a probe from before the delay ended is not fresh", with_vol(lost_standby, probe_requested_at=NOW - 30, fence_not_before=NOW - 0.5),
     lost(**standby_lost_facts, gateway=Gateway(1, FreshProbe(NOW - 29, 1))), Code.PEER_LOST_PROBING_GATEWAY, all_of(lacks(FencePeer), has(ProbeGateway))),
    ("S8: an Outdated standby does not fence", lost_standby, lost(**standby_lost_facts, drbd={"disk": Disk.OUTDATED}),
     Code.PEER_LOST_CANNOT_TAKE_OVER, lacks(FencePeer, ProbeGateway)),
    ("S8: a banned standby does not fence", lost_standby, lost(**standby_lost_facts, intent=Intent(bans=(Ban("node1"),))),
     Code.PEER_LOST_CANNOT_TAKE_OVER, lacks(FencePeer)),
    ("S8 overridden by clevervm fence", with_vol(lost_standby, probe_requested_at=NOW - 0.5),
     lost(**standby_lost_facts, intent=Intent(bans=(Ban("node1"),), fence_seq=1), gateway=Gateway(1, FRESH)),
     Code.PEER_LOST_FENCING, has(FencePeer, lambda a: a.operator)),
    ("standby waits the priority delay", lost_standby, lost(**standby_lost_facts), Code.PEER_LOST_WAITING_DELAY,
     all_of(lacks(FencePeer), lambda d: d.state.fence_not_before is not None and d.state.fence_not_before >= LOST_AT + S.priority_delay)),
    ("the grantor waits the priority delay even if the grantee's ack was lost in the partition",
     with_vol(state(phase=Phase.SECONDARY, grant_out=MY_GRANT, episode=EP, episode_boot=BOOT), lost_at=LOST_AT),
     lost(active=False, resources=Resources(False, False, VMS_DOWN), drbd={"role": Role.SECONDARY}, peer=report(received_at=NOW - 2)),
     Code.PEER_LOST_WAITING_DELAY,
     all_of(lacks(FencePeer), lambda d: d.state.fence_not_before is not None and d.state.fence_not_before >= LOST_AT + S.priority_delay)),
    ("no delay when the peer's device reports it off", lost_standby, lost(**standby_lost_facts, fencing=Fencing(peer_reported_off=True)),
     Code.PEER_LOST_PROBING_GATEWAY, has(ProbeGateway)),
    ("active probes at once", lost_active, lost(), Code.PEER_LOST_PROBING_GATEWAY, all_of(has(ProbeGateway), lacks(FencePeer))),
    ("active fences at once with a fresh probe", with_vol(lost_active, probe_requested_at=NOW - 0.5), lost(gateway=Gateway(1, FRESH)),
     Code.PEER_LOST_FENCING, has(FencePeer, lambda a: a.episode == EP and not a.operator)),
    ("fence running", lost_active, lost(fencing=Fencing(attempt=FenceAttempt(EP, NOW - 1, True))), Code.FENCE_IN_PROGRESS,
     all_of(lacks(FencePeer), lambda d: "confirm-fenced" not in d.reason.sentence)),
    ("fence running again after failures names the operator's way out", lost_active,
     lost(fencing=Fencing(attempt=FenceAttempt(EP, NOW - 1, True), failures=2)), Code.FENCE_IN_PROGRESS,
     all_of(lacks(FencePeer, Promote), lambda d: "failed 2x so far" in d.reason.sentence
            and "clevervm confirm-fenced node2" in d.reason.sentence)),
    ("fence failed: backoff (S2: a failure confirms nothing)", lost_active,
     lost(fencing=Fencing(attempt=FenceAttempt(EP, NOW - 1.5, False, NOW - 0.5, "timeout"), failures=1)),
     Code.FENCE_FAILED_RETRYING, all_of(lacks(FencePeer, Promote), lambda d: "clevervm confirm-fenced node2" in d.reason.sentence)),
    # after the fence (S1b)
    ("confirmed, DRBD still shows the dead peer", lost_standby, lost(**standby_lost_facts, drbd={"connection": Conn.CONNECTED}, fencing=Fencing(records=(DEV,))),
     Code.FENCE_CONFIRMED_DISCONNECTING, all_of(has(DisconnectDrbd), lacks(Promote))),
    ("promote after fence", lost_standby, lost(**standby_lost_facts, fencing=Fencing(records=(DEV,))), Code.PROMOTE_AFTER_FENCE,
     all_of(has(Promote, lambda a: a.gate == "episode:1" and all(p.restore is None for p in a.vms)), epoch_bumped)),
    ("the promotion's own fence-peer call is answered 7 under the episode's record", lost_standby,
     lost(**standby_lost_facts, fencing=Fencing(records=(DEV,)), drbd={"fence_peer_pending": True},
          sequence=Sequence(SequenceKind.PROMOTE, "episode:1", NOW - 0.2)),
     Code.SEQUENCE_IN_PROGRESS, has(AnswerFencePeer, lambda a: a.exit_code == 7)),
    ("a fenced peer back before its daemon (DRBD connected after the record): no second fence, no promote",
     with_vol(lost_standby, lost_at=NOW - 20, fence_not_before=NOW - 20),
     lost(**standby_lost_facts, fencing=Fencing(records=(DEV,), attempt=FenceAttempt(EP, NOW - 3, False, NOW - 1)),
          gateway=Gateway(1, FRESH), drbd={"connection": Conn.CONNECTED, "peer_role": Role.SECONDARY, "peer_disk": Disk.UP_TO_DATE,
                                           "connected_since": NOW - 0.5}),
     Code.FENCED_PEER_RETURNED, all_of(lacks(FencePeer, Promote, ProbeGateway), lambda d: d.phase is Phase.SECONDARY)),
    ("the promotion's fence-peer call is answered 1 once the peer is heard again", state(phase=Phase.PROMOTING, episode=EP, episode_boot=BOOT),
     facts(active=False, peer=report(boot_id="node2-boot2", incarnation=2), resources=Resources(False, False, VMS_DOWN), fencing=Fencing(records=(DEV,)),
           drbd={"fence_peer_pending": True, "connection": Conn.CONNECTING, "peer_role": Role.UNKNOWN, "role": Role.SECONDARY},
           sequence=Sequence(SequenceKind.PROMOTE, "episode:1", NOW - 0.2)),
     Code.SEQUENCE_IN_PROGRESS, has(AnswerFencePeer, lambda a: a.exit_code == 1)),
    ("active carries on after the fence", lost_active, lost(fencing=Fencing(records=(DEV,)), drbd={"fence_peer_pending": True, "suspended": Suspended.FENCING}),
     Code.PRIMARY_AFTER_FENCE, all_of(has(AnswerFencePeer, lambda a: a.exit_code == 7), epoch_bumped)),
    ("S3: Outdated disk", lost_standby, lost(**standby_lost_facts, drbd={"disk": Disk.OUTDATED}, fencing=Fencing(records=(DEV,))),
     Code.PROMOTE_REFUSED_DISK, lacks(Promote)),
    ("S3: Consistent needs accept-data-loss", lost_standby, lost(**standby_lost_facts, drbd={"disk": Disk.CONSISTENT}, fencing=Fencing(records=(OPR,))),
     Code.PROMOTE_REFUSED_CONSISTENT, lacks(Promote)),
    ("S3: epoch behind", with_vol(state(phase=Phase.SECONDARY, episode=EP, episode_boot=BOOT, peer_epoch_seen=Epoch(4, "node2")), lost_at=LOST_AT),
     lost(**standby_lost_facts, fencing=Fencing(records=(DEV,))), Code.PROMOTE_REFUSED_EPOCH_BEHIND, lacks(Promote)),
    ("S9: configuration not checked yet", lost_standby, lost(**standby_lost_facts, drbd={"config_safe": None}, fencing=Fencing(records=(DEV,))),
     Code.PROMOTE_REFUSED_CONFIG, lacks(Promote)),
    ("operator confirm with data loss accepted", lost_standby,
     lost(**standby_lost_facts, drbd={"disk": Disk.CONSISTENT}, fencing=Fencing(records=(dataclasses.replace(OPR, accept_data_loss=True),))),
     Code.PROMOTE_AFTER_OPERATOR_CONFIRM, has(Promote, lambda a: a.force)),
    # DRBD's own fencing (§4.5)
    ("handler: peer heard, ask it to outdate", state(), facts(drbd={"fence_peer_pending": True, "suspended": Suspended.FENCING, "connection": Conn.CONNECTING}),
     Code.OUTDATING_PEER, lambda d: d.state.published is not None and d.state.published.outdate_request),
    ("handler: peer outdated since we asked, answer 4", with_vol(state(), outdate_requested_at=NOW - 0.5), facts(peer=report(disk=Disk.OUTDATED), drbd={"fence_peer_pending": True, "suspended": Suspended.FENCING, "connection": Conn.CONNECTING}),
     Code.PEER_OUTDATED_ANSWERED, all_of(has(AnswerFencePeer, lambda a: a.exit_code == 4), epoch_bumped)),
    ("handler: an Outdated report from before the request is not enough", state(),
     facts(peer=report(disk=Disk.OUTDATED), drbd={"fence_peer_pending": True, "suspended": Suspended.FENCING, "connection": Conn.CONNECTING}),
     Code.OUTDATING_PEER, lacks(AnswerFencePeer)),
    ("a fence record older than DRBD's last connection is void", lost_active,
     lost(fencing=Fencing(records=(DEV,)), drbd={"fence_peer_pending": True, "suspended": Suspended.FENCING, "connected_since": NOW - 0.5}),
     # no second FencePeer: the coordinator would answer it with the void record (a flap without a fence)
     Code.FENCED_PEER_RETURNED, all_of(lacks(AnswerFencePeer, ResumeIo, FencePeer), lambda d: d.phase is Phase.PRIMARY)),
    ("handler during a promotion after the fence: answer 7 (DRBD runs fence-peer before a disconnected promote)", lost_standby,
     lost(**standby_lost_facts, fencing=Fencing(records=(DEV,)), drbd={"fence_peer_pending": True},
          sequence=Sequence(SequenceKind.PROMOTE, "episode:1", NOW - 0.5)),
     Code.SEQUENCE_IN_PROGRESS, has(AnswerFencePeer, lambda a: a.exit_code == 7)),
    ("handler during a promotion under a stale episode gate: answer 1", lost_standby,
     lost(**standby_lost_facts, fencing=Fencing(records=(DEV,)), drbd={"fence_peer_pending": True},
          sequence=Sequence(SequenceKind.PROMOTE, "episode:0", NOW - 0.5)),
     Code.SEQUENCE_IN_PROGRESS, all_of(has(AnswerFencePeer, lambda a: a.exit_code == 1), lacks(ResumeIo))),
    ("handler during a promotion under a grant (DRBD just disconnected): answer 1", state(phase=Phase.PROMOTING, grant_ack=GRANT),
     facts(active=False, peer=report(grant=GRANT), drbd={"fence_peer_pending": True, "connection": Conn.CONNECTING, "peer_role": Role.UNKNOWN},
           sequence=Sequence(SequenceKind.PROMOTE, f"grant:{GRANT.grant_id}", NOW - 0.5)),
     Code.SEQUENCE_IN_PROGRESS, has(AnswerFencePeer, lambda a: a.exit_code == 1)),
    ("resume-io with the evidence", state(), facts(drbd={"suspended": Suspended.FENCING, "peer_disk": Disk.OUTDATED, "connection": Conn.CONNECTING}),
     Code.RESUMING_IO, has(ResumeIo)),
    ("outdate on request", secondary, facts(active=False, peer=active_report(outdate_request=True), drbd={"connection": Conn.CONNECTING}),
     Code.OUTDATING_LOCAL_DISK, has(OutdateLocalDisk)),
    ("reconnect a StandAlone DRBD", state(), facts(drbd={"connection": Conn.STANDALONE}), Code.RECONNECTING_DRBD, has(ReconnectDrbd)),
    # handover (§4.3) and election
    ("migrate: hand over", state(), facts(intent=Intent(bans=(Ban("node1"),))), Code.HANDOVER_DEMOTING,
     all_of(has(Demote, lambda a: a.mode is DemoteMode.SAVE and a.grant is not None), lambda d: d.state.durable.grant_out is not None)),
    ("granted, waiting", state(phase=Phase.SECONDARY, grant_out=MY_GRANT), facts(active=False, peer=report()), Code.HANDOVER_GRANTED,
     lambda d: d.state.published is not None and d.state.published.grant == MY_GRANT),
    ("grant offered: acknowledge", secondary, facts(active=False, peer=report(grant=GRANT)), Code.HANDOVER_ACKNOWLEDGED,
     all_of(lambda d: d.state.durable.grant_ack == GRANT, lacks(Promote))),
    ("grant offered while ineligible: decline", secondary, facts(active=False, peer=report(grant=GRANT), drbd={"disk": Disk.OUTDATED}),
     Code.HANDOVER_DECLINED, lambda d: d.state.published is not None and d.state.published.decline == GRANT.grant_id),
    ("S1a holds: promote under the grant", state(phase=Phase.SECONDARY, grant_ack=GRANT),
     facts(active=False, peer=report(grant=GRANT), drbd={"peer_role": Role.SECONDARY}), Code.HANDOVER_PROMOTING,
     has(Promote, lambda a: a.gate == f"grant:{GRANT.grant_id}" and all(p.restore is not None and p.restore.handover_id == GRANT.grant_id for p in a.vms))),
    ("S1a: DRBD not Connected, wait", state(phase=Phase.SECONDARY, grant_ack=GRANT),
     facts(active=False, peer=report(grant=GRANT), drbd={"connection": Conn.CONNECTING, "peer_role": Role.UNKNOWN}), Code.HANDOVER_WAITING_DRBD, lacks(Promote)),
    ("S1a: a grant from an earlier grantor incarnation is void", state(phase=Phase.SECONDARY, grant_ack=GRANT),
     facts(active=False, peer=report(grant=GRANT, incarnation=2), drbd={"peer_role": Role.SECONDARY}), Code.ELECTION_WAITING_YIELD, lacks(Promote)),
    ("move wanted, peer cannot take", state(), facts(intent=Intent(bans=(Ban("node1"),)), peer=report(eligible=False)),
     Code.MOVE_WANTED_PEER_NOT_ELIGIBLE, lacks(Demote)),
    ("yield out", state(phase=Phase.SECONDARY, grant_out=MY_YIELD), facts(active=False, peer=report()), Code.GRANT_OUTSTANDING, lacks(Promote)),
    ("election: yield to the node with the better gateway score", secondary, facts(active=False, peer=report(gateway_score=2)),
     Code.ELECTION_YIELDING, lambda d: d.state.durable.grant_out is not None and d.state.durable.grant_out.kind is GrantKind.YIELD),
    ("election: better candidate waits", secondary, facts(active=False, peer=report(gateway_score=0)), Code.ELECTION_WAITING_YIELD, lacks(Promote)),
    ("election: yield acknowledged, promote", state(phase=Phase.SECONDARY, grant_ack=YIELD),
     facts(active=False, peer=report(grant=YIELD), drbd={"peer_role": Role.SECONDARY}), Code.ELECTION_PROMOTING, has(Promote)),
    ("election: nobody eligible", secondary, facts(active=False, peer=report(eligible=False), drbd={"disk": Disk.OUTDATED}),
     Code.ELECTION_NO_ELIGIBLE_NODE, lacks(Promote)),
    # the active node's duties
    ("steady active", state(), facts(), Code.NO_ACTION_PRIMARY, lambda d: not [a for a in d.actions if type(a).__name__ not in ("Publish",)]),
    ("steady standby", secondary, facts(active=False), Code.NO_ACTION_SECONDARY, NO_RESOURCE_ACTION),
    ("complete an interrupted promote", state(), facts(resources=Resources(False, False, VMS_DOWN)), Code.COMPLETING_PROMOTE, has(Promote, lambda a: a.gate == "held")),
    ("clean a partial group without DRBD Primary", state(), facts(drbd={"role": Role.SECONDARY}, resources=Resources(False, True, VMS_DOWN)),
     Code.CLEANING_PARTIAL, has(Demote, lambda a: a.mode is DemoteMode.STOP)),
    ("sequence running", state(), facts(sequence=Sequence(SequenceKind.VM, "held", NOW - 1)), Code.SEQUENCE_IN_PROGRESS, lacks(Promote, Demote, StartVm)),
    ("sequence failed: back off", state(), facts(last_result=SequenceResult(SequenceKind.VM, "held", False, NOW - 0.5, "start failed")),
     Code.SEQUENCE_FAILED_WAITING, lacks(StartVm, Promote)),
    ("VM crashed: restart here", state(), facts(resources=Resources(True, True, (Vm("vm1", VmState.CRASHED, StopCause.CRASH), VMS_UP[1])),
                                                fail_counts=(FailCount("vm1", 1, NOW - 1),)),
     Code.VM_RESTARTING_AFTER_CRASH, has(StartVm, lambda a: a.plan.name == "vm1" and a.plan.restore is None)),
    ("VM stopped outside: bring back", state(), facts(resources=Resources(True, True, (Vm("vm1", VmState.STOPPED, StopCause.OUTSIDE), VMS_UP[1]))),
     Code.VM_BROUGHT_BACK, has(StartVm, lambda a: a.plan.name == "vm1")),
    ("forcestart restores the forcestop image", state(),
     facts(resources=Resources(True, True, (Vm("vm1", VmState.STOPPED, StopCause.CLUSTER, ImageToken(ImageKind.FORCESTOP, None, E1, "0A")), VMS_UP[1]))),
     Code.VM_STARTING, has(StartVm, lambda a: a.plan.restore is not None)),
    ("a stale image is never restored", state(),
     facts(resources=Resources(True, True, (Vm("vm1", VmState.STOPPED, StopCause.CLUSTER, ImageToken(ImageKind.FORCESTOP, None, E1, "09")), VMS_UP[1]))),
     Code.VM_STARTING, has(StartVm, lambda a: a.plan.restore is None)),
    ("VM past threshold, peer failed too: stays stopped", state(),
     facts(resources=Resources(True, True, (Vm("vm1", VmState.CRASHED, StopCause.CRASH), VMS_UP[1])), fail_counts=(FailCount("vm1", 3, NOW - 1),),
           peer=report(fail_counts=(("vm1", 3),))), Code.VM_FAILED_STAYS_STOPPED, lacks(StartVm, Demote)),
    ("VM past threshold here only: hand over", state(),
     facts(resources=Resources(True, True, (Vm("vm1", VmState.CRASHED, StopCause.CRASH), VMS_UP[1])), fail_counts=(FailCount("vm1", 3, NOW - 1),)),
     Code.HANDOVER_DEMOTING, has(Demote)),
    ("fail counts expire after failure_timeout", state(),
     facts(resources=Resources(True, True, (Vm("vm1", VmState.CRASHED, StopCause.CRASH), VMS_UP[1])), fail_counts=(FailCount("vm1", 3, NOW - 700),)),
     Code.VM_RESTARTING_AFTER_CRASH, has(StartVm)),
    ("forcestop saves and keeps stopped", state(), facts(intent=Intent(target_role=TargetRole.STOPPED)), Code.VM_FORCE_STOPPING,
     has(StopVm, lambda a: a.save)),
    # stopping
    ("clean stop, nobody can take over", state(), facts(local={"shutting_down": True}, peer=report(eligible=False)), Code.SHUTDOWN_STOPPING,
     has(Demote, lambda a: a.mode is DemoteMode.STOP)),
    ("clean stop waits for the grantee", state(phase=Phase.SECONDARY, grant_out=MY_GRANT), facts(active=False, peer=report(), local={"shutting_down": True}),
     Code.SHUTDOWN_WAITING_HANDOVER, lambda d: not d.ready_to_stop),
    ("clean stop stays while the grantee promotes (its DRBD step needs DRBD Connected)", state(phase=Phase.SECONDARY),
     facts(active=False, peer=report(phase="PROMOTING", ack=MY_GRANT.grant_id), local={"shutting_down": True}),
     Code.SHUTDOWN_WAITING_HANDOVER, lambda d: not d.ready_to_stop),
    ("clean stop with nobody active: yield to the peer first", secondary, facts(active=False, peer=report(), local={"shutting_down": True}),
     Code.SHUTDOWN_WAITING_HANDOVER,
     lambda d: not d.ready_to_stop and d.state.durable.grant_out is not None and d.state.durable.grant_out.kind is GrantKind.YIELD),
    ("clean stop declines a grant offered to it", secondary, facts(active=False, peer=report(grant=GRANT), local={"shutting_down": True}),
     Code.HANDOVER_DECLINED, lambda d: not d.ready_to_stop and d.state.published is not None and d.state.published.decline == GRANT.grant_id),
    ("clean stop done", secondary, facts(active=False, peer=active_report(), local={"shutting_down": True}), Code.SHUTDOWN_READY,
     lambda d: d.ready_to_stop and d.state.published is not None and d.state.published.leaving),
    # S4 with an operator record: a restarted daemon keeps its resources
    ("S4: operator record lets a lone node promote", with_vol(state(phase=Phase.STARTING, peer_heard_boot=None, episode=LossEpisode("node2", None, None, 1), episode_boot=BOOT), lost_at=None),
     facts(active=False, age=None, peer_facts={"report": None}, drbd={"disk": Disk.CONSISTENT, "connection": Conn.CONNECTING, "peer_role": Role.UNKNOWN},
           fencing=Fencing(records=(FenceRecord(LossEpisode("node2", None, None, 1), Evidence.OPERATOR, "operator", NOW - 1, True),))),
     Code.PROMOTE_AFTER_OPERATOR_CONFIRM, has(Promote, lambda a: a.force)),
    ("S4: an episode of an earlier boot is never carried on", with_vol(state(phase=Phase.STARTING, peer_heard_boot=None, episode=EP, episode_boot="node1-boot0"), lost_at=None),
     facts(active=False, age=None, peer_facts={"report": None}, drbd={"connection": Conn.CONNECTING, "peer_role": Role.UNKNOWN}, fencing=Fencing(records=(DEV,))),
     Code.STARTING_WAITING_FOR_PEER, lacks(Promote, FencePeer)),
]


@pytest.mark.parametrize(("st", "f", "code", "check"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_case(st: Any, f: Any, code: Code, check: Callable[[Decision], bool]) -> None:
    d = step(st, f, S)
    assert d.reason.code is code, f"{d.reason}"
    assert check(d), f"{d.reason}; actions {d.actions}"
    assert d.reason.sentence


def test_every_reason_code_has_a_row() -> None:
    assert {c[3] for c in CASES} == set(Code)


def test_vm_crash_does_not_restart_stale_image_even_if_present() -> None:
    img = ImageToken(ImageKind.HANDOVER, "g", E1, "0A")
    f = facts(resources=Resources(True, True, (Vm("vm1", VmState.CRASHED, StopCause.CRASH, img), VMS_UP[1])))
    d = step(state(), f, S)
    assert any(isinstance(a, StartVm) and a.plan.restore is None for a in d.actions)


# DESIGN 4.4: an isolated active stops feeding a configured hardware watchdog, once the isolation
# outlasted the gateway dampening; never without a watchdog, never on the first lost probe round.
WATCHDOG = dataclasses.replace(S, self_fence_when_isolated=True)
ISOLATED = lost(gateway=Gateway(0, FreshProbe(NOW - 0.2, 0)))


@pytest.mark.parametrize(("settings", "lost_for", "self_fences"), [
    (WATCHDOG, S.gateway_dampen + 1, True),
    (WATCHDOG, S.gateway_dampen - 0.5, False),
    (S, S.gateway_dampen + 1, False),
], ids=["watchdog, isolated past the dampening", "watchdog, isolation younger than the dampening", "no watchdog"])
def test_an_isolated_active_self_fences_only_with_a_watchdog_after_the_dampening(settings: Settings, lost_for: float, self_fences: bool) -> None:
    st = with_vol(state(episode=EP, episode_boot=BOOT), lost_at=NOW - lost_for, probe_requested_at=NOW - 0.5, fence_not_before=NOW - lost_for)
    d = step(st, ISOLATED, settings)
    assert d.reason.code is Code.PEER_LOST_NO_GATEWAY, d.reason
    assert not any(isinstance(a, FencePeer) for a in d.actions)
    assert any(isinstance(a, SelfFence) for a in d.actions) is self_fences, d.actions
    assert ("watchdog is no longer fed" in d.reason.sentence) is self_fences


def test_an_isolated_standby_never_self_fences() -> None:
    st = with_vol(lost_standby, lost_at=NOW - 30, probe_requested_at=NOW - 0.5, fence_not_before=NOW - 30)
    d = step(st, lost(**standby_lost_facts, gateway=Gateway(0, FreshProbe(NOW - 0.2, 0))), WATCHDOG)
    assert d.reason.code is Code.PEER_LOST_NO_GATEWAY, d.reason
    assert not any(isinstance(a, SelfFence) for a in d.actions), (d.reason, d.actions)
