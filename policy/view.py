"""Derived views of one snapshot: the peer's status, what this node holds,
who counts as active, eligibility and the election order.

Pure functions of (state, facts, settings). The simulator's oracle does not
use them: it re-derives what it checks from the world's ground truth.
"""

from __future__ import annotations

from enum import StrEnum

from .facts import Facts, FenceRecord, PeerReport, Vm
from .model import Conn, Disk, Epoch, Grant, LossEpisode, Phase, Role, VmState
from .mutations import Mutations
from .settings import Settings
from .state import Durable


class PeerStatus(StrEnum):
    HEARD = "heard"                  # a valid heartbeat within heartbeat.timeout
    INCOMPATIBLE = "incompatible"    # alive, unknown protocol version
    UNAUTHENTICATED = "unauthenticated"  # alive, key mismatch
    NEVER = "never"                  # not heard at all this boot
    LEFT = "left"                    # silent after announcing a clean stop with nothing held
    RESTARTING = "restarting"        # silent within an announced restart window
    LOST = "lost"


ACTIVE_PHASES = frozenset({Phase.PRIMARY.value, Phase.PROMOTING.value, Phase.DEMOTING.value})


def min_link_age(f: Facts) -> float | None:
    ages = [ln.age for ln in f.peer.links if ln.age is not None]
    return min(ages) if ages else None


def peer_status(f: Facts, s: Settings) -> PeerStatus:
    age = min_link_age(f)
    rep = f.peer.report
    if rep is not None and age is not None and age < s.heartbeat_timeout:
        return PeerStatus.HEARD
    if f.peer.incompatible:
        return PeerStatus.INCOMPATIBLE
    if f.peer.unauthenticated:
        return PeerStatus.UNAUTHENTICATED
    if rep is None:
        return PeerStatus.NEVER
    if rep.leaving and not rep.holds:
        return PeerStatus.LEFT
    if rep.restarting_until is not None and f.now < rep.restarting_until:
        return PeerStatus.RESTARTING
    return PeerStatus.LOST


def vm_held(vm: Vm) -> bool:
    return vm.state in (VmState.RUNNING, VmState.PAUSED)


def holds(f: Facts) -> bool:
    """This node holds some resource of the group."""
    r = f.resources
    return f.drbd.role is Role.PRIMARY or r.mounted or r.ip or any(vm_held(v) for v in r.vms)


def fully_held(f: Facts) -> bool:
    r = f.resources
    return f.drbd.role is Role.PRIMARY and r.mounted and r.ip


def banned(f: Facts, node: str) -> bool:
    return any(b.node == node and (b.until is None or f.now < b.until) for b in f.intent.bans)


def disk_ok(disk: Disk, m: Mutations) -> bool:
    return disk is Disk.UP_TO_DATE or (m.promote_consistent and disk is Disk.CONSISTENT)


def effective_fail_count(f: Facts, s: Settings, vm: str) -> int:
    for fc in f.fail_counts:
        if fc.vm == vm:
            if s.failure_timeout > 0 and f.now - fc.last_at >= s.failure_timeout:
                return 0
            return fc.count
    return 0


def peer_fail_count(rep: PeerReport | None, vm: str) -> int:
    if rep is None:
        return 0
    return next((c for name, c in rep.fail_counts if name == vm), 0)


def record_for(f: Facts, episode: LossEpisode | None) -> FenceRecord | None:
    """A fence record of this episode that still means something; one that accepts data loss is
    preferred (it says more). A record older than DRBD's last connection to the peer is void: the
    peer came back (a new boot, powered on after the fence) and DRBD talked to it since."""
    if episode is None:
        return None
    since = f.drbd.connected_since
    mine = [r for r in f.fencing.records if r.episode == episode and (since is None or r.confirmed_at >= since)]
    return next((r for r in mine if r.accept_data_loss), mine[0] if mine else None)


def self_eligible(d: Durable, f: Facts, s: Settings, m: Mutations) -> bool:
    """May this node run the resources (what it publishes as `eligible`)."""
    return (disk_ok(f.drbd.disk, m) and not f.drbd.split_brain and f.drbd.config_safe is True
            and not banned(f, s.node) and s.node not in f.intent.standby and not f.intent.maintenance
            and d.block is None and d.peer_heard_boot == f.local.boot_id
            and not f.local.shutting_down)


def peer_can_take(f: Facts, s: Settings, rep: PeerReport) -> bool:
    """The heard peer can take the resources by handover (DRBD must stay Connected)."""
    return (rep.eligible and rep.disk is Disk.UP_TO_DATE and f.drbd.connection is Conn.CONNECTED
            and f.drbd.peer_disk is Disk.UP_TO_DATE and not banned(f, s.peer) and s.peer not in f.intent.standby
            and not rep.holds)


def peer_was_active(d: Durable, rep: PeerReport | None) -> bool:
    """The peer was active when last heard, or is the grantee of a grant or yield we have out: it
    counts as active from its acknowledgement, which the partition may have kept from us."""
    if rep is None:
        return True    # unknown (a restarted daemon): assume it was, so the delay applies
    return rep.holds or rep.phase in ACTIVE_PHASES or d.grant_out is not None


def election_key(eligible: bool, score: int | None, node: str, s: Settings) -> tuple[bool, int, bool]:
    return (eligible, -1 if score is None else score, node == s.preferred_node)


def better_candidate(d: Durable, f: Facts, s: Settings, m: Mutations) -> bool:
    """This node wins the cold-start election (eligible, gateway score, preferred node, lower name)."""
    rep = f.peer.report
    mine = election_key(self_eligible(d, f, s, m), f.gateway.score, s.node, s)
    if rep is None:
        return mine[0]
    theirs = election_key(rep.eligible, rep.gateway_score, s.peer, s)
    if mine != theirs:
        return mine > theirs
    return s.node < s.peer


def grant_offered_to_me(f: Facts, s: Settings) -> Grant | None:
    rep = f.peer.report
    if rep is None or rep.grant is None:
        return None
    g = rep.grant
    if g.grantee != s.node or g.grantor != s.peer or g.grantor_incarnation != rep.incarnation \
            or g.grantee_incarnation not in (None, f.local.incarnation):
        return None
    return g


def epoch_behind(d: Durable) -> bool:
    return d.epoch < d.peer_epoch_seen


def next_epoch(d: Durable, s: Settings) -> Epoch:
    return d.epoch.next_for(s.node, d.peer_epoch_seen)
