"""clever-cluster's decision core: facts in, decision out (DESIGN §4).

``step(state, facts, settings) -> Decision(state, actions, reason)`` is a pure
function: no I/O, no clock, no randomness (time is ``facts.now``, the fence
jitter is ``facts.random_draw``). The runtime observes, calls ``step`` on
every change and at least every tick, persists ``decision.state.durable``
when it changed, then carries out ``decision.actions``. docs/policy.md is the
contract for each fact and action; docs/reasons.md lists every reason code.

Identities (DESIGN §4.1): incarnation and boot id (in ``Facts.local`` and
the peer's report), ``Epoch`` (counter, node), ``LossEpisode`` (peer, its
incarnation and boot id, a persisted counter) and ``Grant`` (grant id,
grantee, grantor incarnation, epoch; also the cold-start yield token).

Safety rules, numbered as in DESIGN §4.2, and where each is kept:

S1  Promote (DRBD, mount, IP, VMs) on a node that holds nothing only (a)
    under a grant or yield this node acknowledged while the peer is heard,
    reports Secondary with nothing held and DRBD is Connected with the peer
    Secondary (placement.s1a_holds, gate ``grant:``), or (b) with a fence
    record for the current loss episode (loss.after_fence, gate
    ``episode:``). The executor re-checks with ``gate_valid`` per step.
S2  Only positive evidence of OFF confirms a fence: the policy acts only on
    a ``FenceRecord`` of the current episode, never on an attempt's end,
    a timeout or silence (loss.peer_gone).
S3  Never promote a disk that is not UpToDate, when the epoch is behind the
    peer's last heard epoch, or on split brain; a Consistent disk only with
    the operator's ``accept_data_loss`` record (Ctx.promote_blocker).
S4  Before the peer was heard once this boot (per-boot marker in
    ``Durable.peer_heard_boot``): no fence, no promotion, except under an
    operator's record for the current episode (step._starting).
S5  Both nodes holding: the lower (or equal) epoch stops at once; a node
    whose own boot the peer reports fenced stops at once (or self-fences);
    a heartbeat from a boot confirmed off blocks as a mis-fence
    (step._both_active, _own_incarnation_fenced, _misfence).
S6  MAINTENANCE: no resource action and no fence; the fence-peer handler
    may still outdate a reachable peer (step._maintenance).
S7  A fence needs a fresh, undampened gateway probe requested at decision
    time that reached the gateway; "no data" counts as unreachable
    (loss.peer_gone).
S8  Never fence unless this node could take over afterwards (disk
    UpToDate, not banned, DRBD configuration safe, epoch not behind); only
    an operator's ``clevervm fence`` overrides (loss.could_take_over).
S9  An unsafe DRBD configuration blocks automatic takeover; a not yet
    checked one makes this node ineligible (step._blocked,
    Ctx.promote_blocker).
"""

from __future__ import annotations

from .actions import (
    Action,
    Alert,
    Announcement,
    AnswerFencePeer,
    Demote,
    DisconnectDrbd,
    FencePeer,
    OutdateLocalDisk,
    ProbeGateway,
    Promote,
    Publish,
    ReconnectDrbd,
    ResumeIo,
    SelfFence,
    StartVm,
    StopVm,
    VmPlan,
    WaitUntil,
)
from .facts import (
    Ban,
    Drbd,
    Facts,
    FailCount,
    FenceAttempt,
    FenceRecord,
    Fencing,
    FreshProbe,
    Gateway,
    Intent,
    Link,
    Local,
    PeerFacts,
    PeerReport,
    Resources,
    Sequence,
    SequenceResult,
    Vm,
)
from .handler import HandlerOutcome, fence_peer_exit_code
from .model import (
    BlockCause,
    Conn,
    DemoteMode,
    Disk,
    Epoch,
    Evidence,
    FencedIncarnation,
    Grant,
    GrantKind,
    ImageKind,
    ImageToken,
    LossEpisode,
    Phase,
    Role,
    SequenceKind,
    StopCause,
    Suspended,
    TargetRole,
    VmState,
)
from .mutations import NO_MUTATIONS, Mutations
from .reasons import Code, Reason
from .settings import Settings
from .state import Block, Durable, PolicyState, initial_state
from .step import Decision, gate_valid, step
from .view import PeerStatus, peer_status

__all__ = [
    "NO_MUTATIONS", "Action", "Alert", "Announcement", "AnswerFencePeer", "Ban", "Block", "BlockCause", "Code", "Conn",
    "Decision", "Demote", "DemoteMode", "DisconnectDrbd", "Disk", "Drbd", "Durable", "Epoch", "Evidence", "Facts",
    "FailCount", "FenceAttempt", "FencePeer", "FenceRecord", "FencedIncarnation", "Fencing", "FreshProbe", "Gateway",
    "Grant", "GrantKind", "HandlerOutcome", "ImageKind", "ImageToken", "Intent", "Link", "Local", "LossEpisode",
    "Mutations", "OutdateLocalDisk", "PeerFacts", "PeerReport", "PeerStatus", "Phase", "PolicyState", "ProbeGateway",
    "Promote", "Publish", "Reason", "ReconnectDrbd", "Resources", "ResumeIo", "Role", "SelfFence", "Sequence",
    "SequenceKind", "SequenceResult", "Settings", "StartVm", "StopCause", "StopVm", "Suspended", "TargetRole", "Vm",
    "VmPlan", "VmState", "WaitUntil", "fence_peer_exit_code", "gate_valid", "initial_state", "peer_status", "step",
]
