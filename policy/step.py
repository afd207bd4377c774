"""``step()``: one decision from (state, facts, settings).

The order of the rules below is the order of precedence: the first rule
that answers makes the decision. Each rule is a function ``Ctx -> Outcome |
None`` (see RULES at the bottom, a table).

Invariants:
- Pure and total: no I/O, no clock, no randomness; any facts give a decision.
- Deterministic: the same (state, facts, settings) give the same decision.
- Durable changes (epoch, episode, grants, S4 marker, block) are in
  ``Decision.state.durable``; the runtime persists them before acting.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import assert_never

from . import view
from .actions import Action, Announcement, AnswerFencePeer, Demote, Publish, SelfFence
from .context import Ctx, Outcome
from .facts import Facts, FenceRecord
from .handler import EXIT_BROKEN
from .loss import peer_gone
from .model import BlockCause, Conn, DemoteMode, Disk, Evidence, GrantKind, LossEpisode, Phase, Role, Suspended
from .mutations import NO_MUTATIONS, Mutations
from .placement import drbd_fencing, held_without_peer, honour_outdate_request, primary, secondary
from .reasons import Code, Reason
from .settings import Settings
from .state import Block, PolicyState
from .view import PeerStatus


@dataclasses.dataclass(frozen=True, slots=True)
class Decision:
    state: PolicyState
    actions: tuple[Action, ...]
    reason: Reason

    @property
    def phase(self) -> Phase:
        return self.state.phase

    @property
    def ready_to_stop(self) -> bool:
        """A clean stop may complete: nothing held, `leaving` published."""
        return self.reason.code is Code.SHUTDOWN_READY


def step(state: PolicyState, facts: Facts, settings: Settings, *, mutations: Mutations = NO_MUTATIONS) -> Decision:
    c = Ctx(state, facts, settings, mutations)
    _bookkeeping(c)
    for rule in RULES:
        out = rule(c)
        if out is not None:
            return _finish(c, out)
    raise AssertionError("the last rule always decides")


# ---------------------------------------------------------------- bookkeeping


def _bookkeeping(c: Ctx) -> None:
    f, s, d = c.f, c.s, c.d
    if not f.drbd.fence_peer_pending and f.drbd.suspended is not Suspended.FENCING:
        c.vol(outdate_requested_at=None)
    if f.stalled or c.st.published is None:
        # after a stall (receivers drained) or a daemon (re)start: observe afresh for a full
        # timeout before any fence or promotion; delays count from freshly observed loss
        c.vol(observe_until=f.now + s.heartbeat_timeout, lost_at=None, fence_not_before=None, probe_requested_at=None)
    if c.d.episode is not None and c.d.episode_boot != f.local.boot_id:
        c.upd(episode=None, episode_boot=None)    # an episode of an earlier boot is never carried on (S4)
    rep = c.rep
    if rep is not None and c.status in (PeerStatus.HEARD, PeerStatus.LEFT):
        c.upd(peer_left=rep.boot_id if rep.leaving and not rep.holds else None)
    if c.status is PeerStatus.HEARD and rep is not None:
        c.upd(peer_heard_boot=f.local.boot_id, episode=None)
        c.vol(lost_at=None, fence_not_before=None, probe_requested_at=None, operator_fence=False)
        if rep.epoch > d.peer_epoch_seen:
            c.upd(peer_epoch_seen=rep.epoch)
        both_up = f.drbd.disk is Disk.UP_TO_DATE and f.drbd.peer_disk is Disk.UP_TO_DATE and rep.disk is Disk.UP_TO_DATE
        if not c.held and f.drbd.connection is Conn.CONNECTED and both_up and rep.epoch > c.d.epoch:
            c.upd(epoch=rep.epoch)
        g = c.d.grant_out
        stale = g is not None and rep.ack != g.grant_id and (
            g.grantor_incarnation != f.local.incarnation or g.grantee_incarnation not in (None, rep.incarnation))
        taken = g is not None and g.grantee == s.peer and rep.holds   # kept published until then: the grantee's gate reads it
        # a peer that offers us a handover was active since: what we granted it has served
        superseded = g is not None and rep.grant is not None and rep.grant.kind is GrantKind.HANDOVER and rep.grant.grantee == s.node
        if g is not None and (rep.decline == g.grant_id or taken or stale or superseded):
            c.upd(grant_out=None)   # declined, taken over, superseded, or void (an earlier incarnation's, not acknowledged)
        offer = view.grant_offered_to_me(f, s)
        if c.d.grant_ack is not None and offer != c.d.grant_ack and not c.held and f.sequence is None:
            c.upd(grant_ack=None)
        if c.d.declined is not None and (offer is None or offer.grant_id != c.d.declined):
            c.upd(declined=None)
        # gateway comparison for a move (§4.3), timed here so the dampen counts from the first lower sample
        lower = (c.held and f.gateway.score is not None and rep.gateway_score is not None and f.gateway.score < rep.gateway_score)
        if not lower:
            c.vol(gateway_lower_since=None)
        elif c.v.gateway_lower_since is None:
            c.vol(gateway_lower_since=f.now)
    elif c.status is PeerStatus.INCOMPATIBLE:
        c.upd(episode=None)
        c.vol(lost_at=None, fence_not_before=None)
    elif c.status in (PeerStatus.LOST, PeerStatus.LEFT, PeerStatus.NEVER):
        if c.d.episode is None:
            n = c.d.episode_counter + 1
            ep = LossEpisode(s.peer, rep.incarnation if rep else None, rep.boot_id if rep else None, n)
            c.upd(episode_counter=n, episode=ep, episode_boot=f.local.boot_id)
        if c.status in (PeerStatus.LOST, PeerStatus.NEVER) and c.v.lost_at is None and f.now >= c.v.observe_until:
            c.vol(lost_at=f.now)
        if view.record_for(f, c.d.episode) is not None and c.d.grant_out is not None:
            c.upd(grant_out=None)   # the grantee is fenced
    if f.intent.fence_seq > c.d.fence_seen:
        c.upd(fence_seen=f.intent.fence_seq)
        if c.status in (PeerStatus.LOST, PeerStatus.LEFT):
            c.vol(operator_fence=True, fence_not_before=None)
        else:
            c.alert("fence_refused", f"operator fence of {s.peer} refused: peer is {c.status}")
    if c.v.lost_at is None and c.status is not PeerStatus.LOST:
        c.vol(gateway_lower_since=c.v.gateway_lower_since if c.status is PeerStatus.HEARD else None)


# ---------------------------------------------------------------- rules


def _hold_loss_clock(c: Ctx) -> None:
    """This node may not fence now (maintenance, BLOCKED): a loss does not start counting its delays
    until the node may act again, then it is observed afresh for one timeout, as after a stall;
    otherwise both nodes would leave with their delays already spent and fence at the same instant."""
    c.vol(observe_until=c.f.now + c.s.heartbeat_timeout, lost_at=None, fence_not_before=None, probe_requested_at=None)


def _maintenance(c: Ctx) -> Outcome | None:
    """S6: observe only. The fence-peer handler may still outdate a reachable peer."""
    if not c.f.intent.maintenance:
        return None
    _hold_loss_clock(c)
    if c.f.local.shutting_down and c.f.sequence is None:
        # observe only means stopping leaves everything as it is (the way back to Pacemaker, a host
        # rebooted in a maintenance window): waiting for a handover that maintenance forbids never ends
        if c.f.drbd.fence_peer_pending:
            c.act(AnswerFencePeer(EXIT_BROKEN))
        return Phase.MAINTENANCE, Code.SHUTDOWN_READY, f"clean stop in maintenance: leaving everything as it is (held={c.held})"
    out = honour_outdate_request(c) or drbd_fencing(c, may_fence_answer=False)
    if c.f.drbd.fence_peer_pending and c.status is not PeerStatus.HEARD:
        c.act(AnswerFencePeer(EXIT_BROKEN))
    if out is not None:
        return Phase.MAINTENANCE, out[1], out[2]
    return Phase.MAINTENANCE, Code.MAINTENANCE_OBSERVING, f"maintenance: observing only (held={c.held}, {c.s.peer} {c.status})"


def _own_incarnation_fenced(c: Ctx) -> Outcome | None:
    """S5: the peer holds a confirmed fence record for this very boot."""
    rep, f = c.rep, c.f
    if c.status is not PeerStatus.HEARD or rep is None:
        return None
    if not any(x.node == c.s.node and x.boot_id == f.local.boot_id for x in rep.fenced):
        return None
    c.alert("own_incarnation_fenced", f"{c.s.peer} holds a fence record for this boot ({f.local.boot_id})")
    if not c.held:
        return Phase.SECONDARY, Code.OWN_INCARNATION_FENCED, f"{c.s.peer} believes this boot ({f.local.boot_id}) was fenced; holding nothing"
    if f.last_result is not None and not f.last_result.ok and f.last_result.gate == "stop_now" and f.sequence is None:
        c.act(SelfFence(f"resources could not be stopped after {c.s.peer} fenced this boot"))
    elif f.sequence is None:
        c.act(Demote("stop_now", DemoteMode.STOP_NOW))
    return Phase.DEMOTING, Code.OWN_INCARNATION_FENCED, f"{c.s.peer} holds a fence record for this boot ({f.local.boot_id}): stopping everything at once"


def _both_active(c: Ctx) -> Outcome | None:
    """S5: both nodes claim resources; the lower epoch stops at once."""
    rep = c.rep
    if c.status is not PeerStatus.HEARD or rep is None or not rep.holds or not c.held:
        return None
    mine, theirs = c.d.epoch, rep.epoch
    if mine > theirs:
        c.alert("both_active", f"{c.s.peer} holds resources too; its epoch {theirs} is lower: it must stop")
        return held_without_peer(c, Code.BOTH_ACTIVE_PEER_MUST_STOP, f"{c.s.peer} holds resources too, epoch {theirs} < ours {mine}: it stops, we keep them")
    c.alert("both_active", f"both nodes hold resources; our epoch {mine} is not higher than {theirs}: stopping")
    if c.f.sequence is None:
        c.act(Demote("stop_now", DemoteMode.STOP_NOW))
    return Phase.DEMOTING, Code.BOTH_ACTIVE_STOPPING, f"both nodes hold resources; epoch {mine} <= {c.s.peer}'s {theirs}: stopping at once"


def _misfenced_record(c: Ctx) -> FenceRecord | None:
    """A record that confirmed off the very boot of the peer that is heard now."""
    rep = c.rep
    if c.status is not PeerStatus.HEARD or rep is None:
        return None
    return next((r for r in c.f.fencing.records
                 if r.episode.peer_boot_id == rep.boot_id and rep.received_at > r.confirmed_at + c.s.heartbeat_interval), None)


def _misfence(c: Ctx) -> Outcome | None:
    """S5: a heartbeat from a boot that a record confirmed off proves a mis-fence."""
    r = _misfenced_record(c)
    if r is None or c.rep is None or c.d.block is not None:
        return None
    detail = f"{c.s.peer} boot {c.rep.boot_id} heard after {r.evidence} confirmed it off at {r.confirmed_at:.2f} ({r.episode})"
    c.upd(block=Block(BlockCause.MISFENCE, detail))
    c.alert("misfence", detail)
    return Phase.BLOCKED, Code.BLOCKED_MISFENCE, detail


_BLOCK_CODE = {BlockCause.SPLIT_BRAIN: Code.BLOCKED_SPLIT_BRAIN, BlockCause.UNSAFE_DRBD_CONFIG: Code.BLOCKED_UNSAFE_DRBD_CONFIG,
               BlockCause.MISFENCE: Code.BLOCKED_MISFENCE}


def _cause_gone(c: Ctx, cause: BlockCause) -> bool:
    match cause:
        case BlockCause.SPLIT_BRAIN:
            return not c.f.drbd.split_brain
        case BlockCause.UNSAFE_DRBD_CONFIG:
            return c.f.drbd.config_safe is True
        case BlockCause.MISFENCE:
            # the operator's unblock acknowledges it once the boot wrongly confirmed off is no longer heard
            # (rebooted); before that, lifting the block would only raise it again at the next decision
            return _misfenced_record(c) is None
        case _:
            assert_never(cause)


def _blocked(c: Ctx) -> Outcome | None:
    """BLOCKED is sticky; only an operator's unblock with the cause gone leaves it."""
    f = c.f
    block = c.d.block
    if block is None:
        if f.drbd.split_brain:
            block = Block(BlockCause.SPLIT_BRAIN, f"DRBD reports split brain (data {f.drbd.data_uuid})")
        elif f.drbd.config_safe is False:
            block = Block(BlockCause.UNSAFE_DRBD_CONFIG, f"unsafe DRBD configuration: {f.drbd.config_problem}")
        else:
            return None
        c.upd(block=block)
        c.alert("blocked", block.detail)
    _hold_loss_clock(c)
    if f.intent.unblock_seq > c.d.unblock_seen:
        c.upd(unblock_seen=f.intent.unblock_seq)
        if _cause_gone(c, block.cause):
            c.upd(block=None)
            return (Phase.PRIMARY if c.held else Phase.SECONDARY), Code.UNBLOCKED, f"unblocked by the operator: {block.cause} is gone"
        return Phase.BLOCKED, Code.UNBLOCK_REFUSED, f"unblock refused: {block.detail} still holds"
    if f.drbd.fence_peer_pending:
        c.act(AnswerFencePeer(EXIT_BROKEN))
    out = honour_outdate_request(c)
    if out is not None:
        return Phase.BLOCKED, out[1], out[2]
    return Phase.BLOCKED, _BLOCK_CODE[block.cause], f"{block.detail}; waiting for `clevervm unblock` once resolved"


def _starting(c: Ctx) -> Outcome | None:
    """S4: before the peer was heard once this boot, neither fence nor promote.

    The only way forward alone is an operator's record for the current
    episode (`confirm-fenced`), which a restarted daemon also carries on."""
    if c.heard_this_boot:
        return None
    from .loss import after_fence
    rec = view.record_for(c.f, c.d.episode)
    if rec is not None and rec.evidence is Evidence.OPERATOR:
        return after_fence(c, rec)
    if c.f.drbd.fence_peer_pending:
        c.act(AnswerFencePeer(EXIT_BROKEN))
    return Phase.STARTING, Code.STARTING_WAITING_FOR_PEER, f"this boot ({c.f.local.boot_id}) has not heard {c.s.peer} yet ({c.status}); no fence, no promotion (S4)"


def _shutdown_alone(c: Ctx) -> Outcome | None:
    if not c.f.local.shutting_down or c.status is PeerStatus.HEARD:
        return None
    if c.held:
        if c.f.sequence is None:
            c.act(Demote("stop", DemoteMode.STOP))
        return Phase.DEMOTING, Code.SHUTDOWN_STOPPING, f"clean stop with {c.s.peer} {c.status}: stopping the resources"
    if c.f.sequence is not None:
        return Phase.DEMOTING, Code.SEQUENCE_IN_PROGRESS, f"{c.f.sequence.kind} sequence under gate {c.f.sequence.gate}"
    return Phase.SECONDARY, Code.SHUTDOWN_READY, "clean stop: nothing held here; leaving"


def _peer_unusable(c: Ctx) -> Outcome | None:
    """The peer is alive but cannot be used (version, key) or is restarting: no fence, no move."""
    peer = c.s.peer
    match c.status:
        case PeerStatus.INCOMPATIBLE:
            code, sentence = Code.PEER_INCOMPATIBLE, f"{peer} speaks an unknown protocol version: alive; no fence, no move"
        case PeerStatus.UNAUTHENTICATED:
            code, sentence = Code.PEER_KEY_MISMATCH, f"datagrams from {peer} fail authentication (key mismatch?): something is alive there; no fence, no takeover"
        case PeerStatus.RESTARTING:
            until = c.rep.restarting_until if c.rep is not None else None
            code, sentence = Code.PEER_RESTARTING, f"{peer} announced a restart; expected back before {until if until is not None else 0:.2f}"
        case _:
            return None
    c.alert(code.value, sentence)
    if c.held:
        return held_without_peer(c, code, sentence)
    return Phase.SECONDARY, code, sentence


def _peer_gone(c: Ctx) -> Outcome | None:
    if c.status not in (PeerStatus.LOST, PeerStatus.LEFT, PeerStatus.NEVER):
        return None   # NEVER here: a restarted daemon that heard the peer earlier this boot
    return peer_gone(c)


def _with_peer(c: Ctx) -> Outcome:
    out = honour_outdate_request(c)
    if out is not None:
        return out
    if c.held or c.f.sequence is not None:
        return primary(c)
    return secondary(c)


RULES: tuple[Callable[[Ctx], Outcome | None], ...] = (
    _maintenance,             # S6
    _own_incarnation_fenced,  # S5
    _both_active,             # S5
    _misfence,                # S5
    _blocked,                 # S3 split brain, S9, mis-fence
    _starting,                # S4
    _shutdown_alone,
    _peer_unusable,
    _peer_gone,               # §4.4, S1b, S2, S7, S8
    _with_peer,               # §4.3, S1a
)


# ---------------------------------------------------------------- finishing


def _finish(c: Ctx, out: Outcome) -> Decision:
    phase, code, sentence = out
    f, s = c.f, c.s
    rep = c.rep
    if c.status is PeerStatus.HEARD and rep is not None and rep.settings_fingerprint and f.local.settings_fingerprint \
            and rep.settings_fingerprint != f.local.settings_fingerprint:
        c.alert("settings_mismatch", f"settings fingerprint {f.local.settings_fingerprint} here, {rep.settings_fingerprint} on {s.peer}")
    grant = c.d.grant_out if (not c.held and f.sequence is None) else None
    ann = Announcement(
        phase=phase, epoch=c.d.epoch, eligible=view.self_eligible(c.d, f, s, c.m),
        grant=grant, ack=c.d.grant_ack.grant_id if c.d.grant_ack else None, decline=c.d.declined,
        outdate_request=c.outdate_request, leaving=code is Code.SHUTDOWN_READY,
        fail_counts=tuple((vm.name, view.effective_fail_count(f, s, vm.name)) for vm in f.resources.vms),
    )
    actions: list[Action] = []
    if code.value != c.st.last_code:
        actions.extend(c.alerts)
    actions.extend(c.actions)
    if ann != c.v.published:
        actions.append(Publish(ann))
    new_state = dataclasses.replace(c.v, durable=c.d, phase=phase, published=ann, last_code=code.value)
    return Decision(new_state, tuple(actions), Reason(code, sentence))


def gate_valid(state: PolicyState, facts: Facts, settings: Settings, gate: str) -> bool:
    """May a sequence under ``gate`` take its next step? The executor asks before each step."""
    kind, _, ident = gate.partition(":")
    status = view.peer_status(facts, settings)
    d = state.durable
    match kind:
        case "stop" | "stop_now" | "handover":
            return True   # giving resources up is always allowed
        case "held" | "grant" | "episode" if facts.drbd.role is Role.PRIMARY:
            # past the DRBD step: DRBD keeps the peer Secondary while Connected; only a peer
            # that reports itself Primary makes going on wrong
            return not (status is PeerStatus.HEARD and facts.peer.report is not None and facts.peer.report.drbd_primary)
        case "held":
            return False
        case "grant":
            rep = facts.peer.report
            return (d.grant_ack is not None and d.grant_ack.grant_id == ident and status is PeerStatus.HEARD
                    and rep is not None and rep.grant == d.grant_ack and not rep.holds
                    and facts.drbd.connection is Conn.CONNECTED and facts.drbd.peer_role is not Role.PRIMARY)
        case "episode":
            ep = d.episode
            return (ep is not None and str(ep.counter) == ident and view.record_for(facts, ep) is not None
                    and status is not PeerStatus.HEARD)
    return False
