"""Every reason a decision can give: one enumeration, one table.

The code is stable snake_case: it is the journald field ``CLEVER_REASON``,
the metric label and the answer of `clevervm why`. ``docs/reasons.md`` is
generated from ``TABLE`` (``python -m clever_cluster.policy.reasons``), and a
test fails when the file is out of date.

Invariant: every ``Code`` member has exactly one row in ``TABLE`` (checked at
import), with the phase the decision is in and what it means.
"""

from __future__ import annotations

import dataclasses
from enum import StrEnum

from .model import Phase


class Code(StrEnum):
    # starting and special phases
    STARTING_WAITING_FOR_PEER = "starting_waiting_for_peer"
    MAINTENANCE_OBSERVING = "maintenance_observing"
    STALL_REOBSERVING = "stall_reobserving"
    # blocks
    BLOCKED_SPLIT_BRAIN = "blocked_split_brain"
    BLOCKED_UNSAFE_DRBD_CONFIG = "blocked_unsafe_drbd_config"
    BLOCKED_MISFENCE = "blocked_misfence"
    UNBLOCKED = "unblocked"
    UNBLOCK_REFUSED = "unblock_refused"
    # S5
    OWN_INCARNATION_FENCED = "own_incarnation_fenced"
    BOTH_ACTIVE_STOPPING = "both_active_stopping"
    BOTH_ACTIVE_PEER_MUST_STOP = "both_active_peer_must_stop"
    # peer seen but unusable
    PEER_INCOMPATIBLE = "peer_incompatible"
    PEER_KEY_MISMATCH = "peer_key_mismatch"
    PEER_LEFT = "peer_left"
    PEER_RESTARTING = "peer_restarting"
    PEER_SILENT_DRBD_CONNECTED = "peer_silent_drbd_connected"
    PEER_DAEMON_SILENT = "peer_daemon_silent"
    PEER_LOST_OUTDATED = "peer_lost_outdated"
    # the loss rules
    PEER_LOST_NO_GATEWAY = "peer_lost_no_gateway"
    PEER_LOST_CANNOT_TAKE_OVER = "peer_lost_cannot_take_over"
    PEER_LOST_WAITING_DELAY = "peer_lost_waiting_delay"
    PEER_LOST_PROBING_GATEWAY = "peer_lost_probing_gateway"
    PEER_LOST_FENCING = "peer_lost_fencing"
    FENCE_IN_PROGRESS = "fence_in_progress"
    FENCE_FAILED_RETRYING = "fence_failed_retrying"
    FENCED_PEER_RETURNED = "fenced_peer_returned"
    FENCE_CONFIRMED_DISCONNECTING = "fence_confirmed_disconnecting"
    PROMOTE_AFTER_FENCE = "promote_after_fence"
    PRIMARY_AFTER_FENCE = "primary_after_fence"
    PROMOTE_REFUSED_DISK = "promote_refused_disk"
    PROMOTE_REFUSED_CONSISTENT = "promote_refused_consistent"
    PROMOTE_REFUSED_EPOCH_BEHIND = "promote_refused_epoch_behind"
    PROMOTE_REFUSED_CONFIG = "promote_refused_config"
    PROMOTE_AFTER_OPERATOR_CONFIRM = "promote_after_operator_confirm"
    # DRBD's own fencing
    OUTDATING_PEER = "outdating_peer"
    PEER_OUTDATED_ANSWERED = "peer_outdated_answered"
    RESUMING_IO = "resuming_io"
    OUTDATING_LOCAL_DISK = "outdating_local_disk"
    RECONNECTING_DRBD = "reconnecting_drbd"
    # handover and election
    HANDOVER_DEMOTING = "handover_demoting"
    HANDOVER_GRANTED = "handover_granted"
    HANDOVER_ACKNOWLEDGED = "handover_acknowledged"
    HANDOVER_DECLINED = "handover_declined"
    HANDOVER_PROMOTING = "handover_promoting"
    HANDOVER_WAITING_DRBD = "handover_waiting_drbd"
    MOVE_WANTED_PEER_NOT_ELIGIBLE = "move_wanted_peer_not_eligible"
    GRANT_OUTSTANDING = "grant_outstanding"
    ELECTION_YIELDING = "election_yielding"
    ELECTION_WAITING_YIELD = "election_waiting_yield"
    ELECTION_PROMOTING = "election_promoting"
    ELECTION_NO_ELIGIBLE_NODE = "election_no_eligible_node"
    # resources on the active node
    NO_ACTION_PRIMARY = "no_action_primary"
    NO_ACTION_SECONDARY = "no_action_secondary"
    COMPLETING_PROMOTE = "completing_promote"
    CLEANING_PARTIAL = "cleaning_partial"
    SEQUENCE_IN_PROGRESS = "sequence_in_progress"
    SEQUENCE_FAILED_WAITING = "sequence_failed_waiting"
    VM_RESTARTING_AFTER_CRASH = "vm_restarting_after_crash"
    VM_BROUGHT_BACK = "vm_brought_back"
    VM_STARTING = "vm_starting"
    VM_FAILED_STAYS_STOPPED = "vm_failed_stays_stopped"
    VM_FORCE_STOPPING = "vm_force_stopping"
    # stopping
    SHUTDOWN_STOPPING = "shutdown_stopping"
    SHUTDOWN_WAITING_HANDOVER = "shutdown_waiting_handover"
    SHUTDOWN_READY = "shutdown_ready"


@dataclasses.dataclass(frozen=True, slots=True)
class Reason:
    code: Code
    sentence: str

    def __str__(self) -> str:
        return f"{self.code}: {self.sentence}"


@dataclasses.dataclass(frozen=True, slots=True)
class Row:
    phases: tuple[Phase, ...]
    meaning: str


P = Phase
TABLE: dict[Code, Row] = {
    Code.STARTING_WAITING_FOR_PEER: Row((P.STARTING,), "This boot has not heard the peer yet; no fence and no promotion (S4). An operator may `confirm-fenced` the peer."),
    Code.MAINTENANCE_OBSERVING: Row((P.MAINTENANCE,), "Maintenance: observe and alert only; no resource action, no fence (S6)."),
    Code.STALL_REOBSERVING: Row((P.SECONDARY, P.PRIMARY, P.FENCING), "The loop stalled, the daemon started, or maintenance or BLOCKED ended; the world is observed afresh for one heartbeat timeout before any fence or promotion, and a loss counts its delays from then."),
    Code.BLOCKED_SPLIT_BRAIN: Row((P.BLOCKED,), "DRBD reports split brain; nothing is promoted until an operator resolves it and unblocks."),
    Code.BLOCKED_UNSAFE_DRBD_CONFIG: Row((P.BLOCKED,), "DRBD's configuration is unsafe (S9); automatic takeover is blocked."),
    Code.BLOCKED_MISFENCE: Row((P.BLOCKED,), "A heartbeat came from a boot of the peer that a fence record said was off: the fence hit the wrong machine (S5). Unblock is accepted once that boot is no longer heard (reboot the peer)."),
    Code.UNBLOCKED: Row((P.SECONDARY, P.PRIMARY), "An operator's unblock was accepted: the cause of the block is gone."),
    Code.UNBLOCK_REFUSED: Row((P.BLOCKED,), "An operator's unblock was refused: the cause of the block is still there."),
    Code.OWN_INCARNATION_FENCED: Row((P.DEMOTING, P.SECONDARY), "The peer holds a confirmed fence record for this very boot: stop all resources at once (S5)."),
    Code.BOTH_ACTIVE_STOPPING: Row((P.DEMOTING,), "Both nodes hold resources and this node's epoch is not the higher one: stop at once (S5)."),
    Code.BOTH_ACTIVE_PEER_MUST_STOP: Row((P.PRIMARY,), "Both nodes hold resources; this node has the higher epoch and keeps them while the peer stops (S5)."),
    Code.PEER_INCOMPATIBLE: Row((P.SECONDARY, P.PRIMARY), "The peer speaks an unknown protocol version: it is alive; no fence, no move."),
    Code.PEER_KEY_MISMATCH: Row((P.SECONDARY, P.PRIMARY), "Datagrams from the peer fail authentication (key mismatch): something is alive there; no fence, no takeover."),
    Code.PEER_LEFT: Row((P.SECONDARY, P.PRIMARY), "The peer announced a clean stop with no resources; nothing to fence."),
    Code.PEER_RESTARTING: Row((P.SECONDARY, P.PRIMARY), "The peer announced a daemon restart and is within its announced window; no fence."),
    Code.PEER_SILENT_DRBD_CONNECTED: Row((P.SECONDARY, P.PRIMARY), "No heartbeat, but DRBD is still Connected (the peer's daemon hung or restarted): no fence during silent_peer_grace."),
    Code.PEER_DAEMON_SILENT: Row((P.PRIMARY,), "The standby's daemon is silent but DRBD replicates to it: nothing to fence while this node is active."),
    Code.PEER_LOST_OUTDATED: Row((P.PRIMARY,), "The standby is lost, but DRBD here shows its disk Outdated (it left gracefully or was outdated): it cannot take over; no fence while this node is active."),
    Code.PEER_LOST_NO_GATEWAY: Row((P.FENCING, P.SECONDARY, P.PRIMARY), "Peer lost, and the fresh gateway probe failed: this node is probably the isolated one; no fence (S7)."),
    Code.PEER_LOST_CANNOT_TAKE_OVER: Row((P.FENCING, P.SECONDARY), "Peer lost, but this node could not take over afterwards (disk, ban, DRBD config); no fence (S8)."),
    Code.PEER_LOST_WAITING_DELAY: Row((P.FENCING,), "Peer lost; waiting priority_delay plus jitter so a live active peer wins any fence race."),
    Code.PEER_LOST_PROBING_GATEWAY: Row((P.FENCING,), "Peer lost; a fresh gateway probe was requested for the fence gate (S7)."),
    Code.PEER_LOST_FENCING: Row((P.FENCING,), "Peer lost: fencing it now."),
    Code.FENCE_IN_PROGRESS: Row((P.FENCING,), "A fence of the peer is running."),
    Code.FENCE_FAILED_RETRYING: Row((P.FENCING,), "The fence failed (only positive evidence of OFF counts, S2); retrying with backoff."),
    Code.FENCED_PEER_RETURNED: Row((P.SECONDARY, P.PRIMARY), "The peer was confirmed off in this loss episode, but DRBD connected to it since (powered back on, its daemon not heard yet): the record proves nothing now; no second fence, no promotion; waiting to hear it."),
    Code.FENCE_CONFIRMED_DISCONNECTING: Row((P.FENCING,), "The fence is confirmed but DRBD still shows the dead peer Connected: disconnect it first."),
    Code.PROMOTE_AFTER_FENCE: Row((P.PROMOTING,), "The peer is confirmed off for this loss episode: promote, mount, add the IP, cold-boot the VMs (S1b)."),
    Code.PRIMARY_AFTER_FENCE: Row((P.PRIMARY,), "The peer is confirmed off; this active node carries on with a new epoch."),
    Code.PROMOTE_REFUSED_DISK: Row((P.FENCING, P.SECONDARY, P.STARTING), "Would promote, but the local disk is not UpToDate or DRBD reports split brain (S3)."),
    Code.PROMOTE_REFUSED_CONSISTENT: Row((P.FENCING, P.SECONDARY, P.STARTING), "Would promote, but the local disk is only Consistent: needs `confirm-fenced --accept-data-loss` (S3)."),
    Code.PROMOTE_REFUSED_EPOCH_BEHIND: Row((P.FENCING, P.SECONDARY, P.STARTING), "Would promote, but this node's epoch is behind the last one heard from the peer (S3)."),
    Code.PROMOTE_REFUSED_CONFIG: Row((P.FENCING, P.SECONDARY), "Would promote, but DRBD's configuration is not known to be safe (S9)."),
    Code.PROMOTE_AFTER_OPERATOR_CONFIRM: Row((P.PROMOTING,), "The operator confirmed the peer off (with data-loss acceptance where needed): promote."),
    Code.OUTDATING_PEER: Row((P.PRIMARY,), "DRBD's fence-peer handler waits; the peer is heard on another link and was asked to outdate its disk."),
    Code.PEER_OUTDATED_ANSWERED: Row((P.PRIMARY,), "The peer's disk is Outdated: answered the fence-peer handler with 4; new epoch."),
    Code.RESUMING_IO: Row((P.PRIMARY,), "DRBD I/O is frozen with no handler running and the evidence is in hand: resume-io."),
    Code.OUTDATING_LOCAL_DISK: Row((P.SECONDARY, P.MAINTENANCE, P.BLOCKED), "The peer's fence-peer handler asked this node to outdate its disk."),
    Code.RECONNECTING_DRBD: Row((P.PRIMARY, P.SECONDARY), "DRBD is StandAlone without split brain (this node disconnected a fenced peer): connect again so the peer resyncs."),
    Code.HANDOVER_DEMOTING: Row((P.DEMOTING,), "Moving to the peer: saving VMs, removing the IP, unmounting, DRBD Secondary; then grant."),
    Code.HANDOVER_GRANTED: Row((P.SECONDARY,), "Demoted and granted the handover; waiting for the peer to acknowledge and promote."),
    Code.HANDOVER_ACKNOWLEDGED: Row((P.SECONDARY,), "Acknowledged the peer's grant (or yield); this node counts as active from now on."),
    Code.HANDOVER_DECLINED: Row((P.SECONDARY,), "Declined the peer's grant: this node cannot take over."),
    Code.HANDOVER_PROMOTING: Row((P.PROMOTING,), "The peer granted, this node acknowledged, the peer is Secondary and DRBD Connected: promote (S1a)."),
    Code.HANDOVER_WAITING_DRBD: Row((P.SECONDARY,), "Acknowledged a grant but S1a does not hold yet (DRBD not Connected or the peer not Secondary); waiting."),
    Code.MOVE_WANTED_PEER_NOT_ELIGIBLE: Row((P.PRIMARY,), "The resources should move, but the peer cannot take them; they stay."),
    Code.GRANT_OUTSTANDING: Row((P.SECONDARY,), "This node granted or yielded; it does not promote until the peer declines, takes over or is fenced."),
    Code.ELECTION_YIELDING: Row((P.SECONDARY,), "Cold start: the peer is the better candidate; yield to it."),
    Code.ELECTION_WAITING_YIELD: Row((P.SECONDARY,), "Cold start: this node is the better candidate; waiting for the peer to yield."),
    Code.ELECTION_PROMOTING: Row((P.PROMOTING,), "Cold start: the peer yielded and this node acknowledged: promote (S1a)."),
    Code.ELECTION_NO_ELIGIBLE_NODE: Row((P.SECONDARY,), "Neither node is eligible to run the resources (disk, ban, standby, DRBD)."),
    Code.NO_ACTION_PRIMARY: Row((P.PRIMARY,), "Active with everything running as intended."),
    Code.NO_ACTION_SECONDARY: Row((P.SECONDARY,), "Standby; the peer is active."),
    Code.COMPLETING_PROMOTE: Row((P.PROMOTING,), "DRBD is Primary here but the group is incomplete (a restart interrupted it): complete it."),
    Code.CLEANING_PARTIAL: Row((P.DEMOTING,), "Part of the group is held without DRBD Primary (an interrupted sequence): stop that part."),
    Code.SEQUENCE_IN_PROGRESS: Row((P.PROMOTING, P.DEMOTING, P.PRIMARY), "A promote, demote or VM sequence is running."),
    Code.SEQUENCE_FAILED_WAITING: Row((P.PRIMARY, P.SECONDARY), "The last sequence failed and was rolled back; waiting before trying again."),
    Code.VM_RESTARTING_AFTER_CRASH: Row((P.PRIMARY,), "A VM crashed (a failure was counted); restarting it here below migration_threshold."),
    Code.VM_BROUGHT_BACK: Row((P.PRIMARY,), "A VM was stopped outside the cluster; starting it again (not a failure; use forcestop to keep it stopped)."),
    Code.VM_STARTING: Row((P.PRIMARY,), "A VM should run (target role started) and is not running: start it."),
    Code.VM_FAILED_STAYS_STOPPED: Row((P.PRIMARY,), "A VM reached migration_threshold here and cannot move; it stays stopped, the others keep running."),
    Code.VM_FORCE_STOPPING: Row((P.PRIMARY,), "Target role is stopped (forcestop): saving a running VM and keeping it stopped."),
    Code.SHUTDOWN_STOPPING: Row((P.DEMOTING,), "Clean stop requested and no peer can take over: stopping the resources."),
    Code.SHUTDOWN_WAITING_HANDOVER: Row((P.SECONDARY,), "Clean stop requested; waiting for the peer to take over what this node granted."),
    Code.SHUTDOWN_READY: Row((P.SECONDARY, P.MAINTENANCE), "Clean stop: nothing held here (or maintenance: everything left as it is); announcing `leaving`; the daemon may exit."),
}

assert set(TABLE) == set(Code), f"codes without a row: {set(Code) - set(TABLE)}"


def markdown() -> str:
    """docs/reasons.md, generated from TABLE."""
    lines = [
        "# Reason codes",
        "",
        "Every decision of the policy carries one of these codes (the journald field",
        "`CLEVER_REASON`, the metric label, the answer of `clevervm why`) and a",
        "sentence with the evidence. Generated from `policy/reasons.py` by",
        "`python -m clever_cluster.policy.reasons > docs/reasons.md`; a test fails",
        "when this file is out of date.",
        "",
        "| code | phases | meaning |",
        "|---|---|---|",
    ]
    for code, row in TABLE.items():
        lines.append(f"| `{code}` | {', '.join(p.value for p in row.phases)} | {row.meaning} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(markdown(), end="")
