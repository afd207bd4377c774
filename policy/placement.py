"""Who should be active, with the peer heard (DESIGN §4.3), and the duties
of the active node: DRBD's fence-peer answers (§4.5), the VMs of the group
against the target role and fail counts, handover, and the cold-start
election with yield tokens.

Invariants:
- A handover grant is published only after this node holds nothing.
- A grantee promotes only under S1a: the grant it acknowledged is still
  offered by the peer's current incarnation, the peer reports Secondary
  with nothing held, and DRBD is Connected with the peer Secondary.
- A node never acknowledges while it has a grant or yield out, and never
  yields while it has acknowledged one; of two crossing yields the one from
  the lower node name is withdrawn (it was not acknowledged).
- The fence-peer handler is answered 4 only on the peer's reported Outdated
  (or worse) disk, 7 only with a fence record of the current episode: on a
  Primary, or on a node whose promotion runs under that episode's gate
  (DRBD runs fence-peer before a disconnected promotion).
"""

from __future__ import annotations

from . import view
from .actions import AnswerFencePeer, Demote, OutdateLocalDisk, Promote, ReconnectDrbd, ResumeIo, StartVm, StopVm, VmPlan
from .context import Ctx, Outcome
from .handler import EXIT_BROKEN, EXIT_PEER_FENCED, EXIT_PEER_OUTDATED
from .model import Conn, DemoteMode, Disk, Grant, GrantKind, Phase, Role, SequenceKind, StopCause, Suspended, TargetRole, VmState
from .reasons import Code
from .view import PeerStatus

OUTDATED_OR_WORSE = (Disk.OUTDATED, Disk.INCONSISTENT)


def drbd_fencing(c: Ctx, may_fence_answer: bool = True) -> Outcome | None:
    """Answer DRBD's fence-peer handler and resume frozen I/O when the evidence is in hand."""
    f = c.f
    if f.drbd.role is not Role.PRIMARY:
        if f.drbd.fence_peer_pending:
            # a disconnected `drbdadm primary` runs fence-peer first and fails unless it hears 4 or 7:
            # a node PROMOTING under a valid episode gate answers with the record that opened the gate
            c.act(AnswerFencePeer(EXIT_PEER_FENCED if may_fence_answer and _promoting_after_fence(c) else EXIT_BROKEN))
        return None
    phase = Phase.MAINTENANCE if f.intent.maintenance else Phase.PRIMARY
    # the peer's own word counts only from a report sent after we asked (a report from before could
    # predate a resync); DRBD's own view of the peer's disk counts as it is
    asked = c.v.outdate_requested_at
    outdated = (c.status is PeerStatus.HEARD and c.rep is not None and c.rep.disk in OUTDATED_OR_WORSE
                and asked is not None and c.rep.received_at > asked)
    outdated = outdated or f.drbd.peer_disk is Disk.OUTDATED
    record = view.record_for(f, c.d.episode) if may_fence_answer else None
    if f.drbd.fence_peer_pending:
        if outdated:
            c.act(AnswerFencePeer(EXIT_PEER_OUTDATED))
            key = f"outdate:{c.rep.incarnation if c.rep else '-'}:{f.drbd.data_uuid}"
            bumped = c.bump_epoch(key) if not f.intent.maintenance else False
            return phase, Code.PEER_OUTDATED_ANSWERED, f"peer's disk is {c.rep.disk if c.rep else f.drbd.peer_disk}; fence-peer answered 4" + (f"; epoch now {c.d.epoch}" if bumped else "")
        if record is not None:
            c.act(AnswerFencePeer(EXIT_PEER_FENCED))
            return None
        if c.status is PeerStatus.HEARD:
            return _ask_outdate(c, phase, f"DRBD froze I/O ({f.drbd.connection}); {c.s.peer} heard on another link")
        return None
    if f.drbd.suspended is Suspended.FENCING and not f.intent.maintenance:   # S6: resume-io is an action, not an answer
        if outdated or record is not None:
            evidence = "peer outdated" if outdated else f"fence record for {record.episode if record else ''}"
            c.act(ResumeIo(evidence))
            return phase, Code.RESUMING_IO, f"DRBD I/O frozen with no fence-peer handler running; {evidence}: resume-io"
        if c.status is PeerStatus.HEARD:
            # the handler gave up (exit 1, e.g. this daemon was down): get the evidence ourselves
            return _ask_outdate(c, phase, f"DRBD I/O frozen (handler gone); {c.s.peer} heard")
    return None


def _promoting_after_fence(c: Ctx) -> bool:
    """A promote sequence runs under the gate of the current episode, which holds a fence record and
    the peer is not heard (the ``episode:`` gate of ``gate_valid``)."""
    seq, ep = c.f.sequence, c.d.episode
    return (seq is not None and seq.kind is SequenceKind.PROMOTE and ep is not None and seq.gate == f"episode:{ep.counter}"
            and c.status is not PeerStatus.HEARD and view.record_for(c.f, ep) is not None)


def _ask_outdate(c: Ctx, phase: Phase, why: str) -> Outcome:
    """Publish the outdate request; the time of the first ask makes later reports count as answers."""
    c.outdate_request = True
    if c.v.outdate_requested_at is None:
        c.vol(outdate_requested_at=c.f.now)
    return phase, Code.OUTDATING_PEER, f"{why}, asked to outdate its disk (now {c.rep.disk if c.rep else '?'})"


def honour_outdate_request(c: Ctx) -> Outcome | None:
    """The peer's fence-peer handler asks this node to outdate its disk (allowed even in maintenance, S6)."""
    rep, f = c.rep, c.f
    if c.status is not PeerStatus.HEARD or rep is None or not rep.outdate_request:
        return None
    if c.held or f.drbd.disk in (Disk.OUTDATED, Disk.INCONSISTENT, Disk.DISKLESS, Disk.FAILED):
        return None
    c.act(OutdateLocalDisk())
    phase = Phase.MAINTENANCE if f.intent.maintenance else (Phase.BLOCKED if c.d.block else Phase.SECONDARY)
    return phase, Code.OUTDATING_LOCAL_DISK, f"{c.s.peer}'s fence-peer handler asks to outdate this disk ({f.drbd.disk}, DRBD {f.drbd.connection})"


def move_reason(c: Ctx) -> str | None:
    f, s = c.f, c.s
    if f.local.shutting_down:
        return "clean stop requested"
    if s.node in f.intent.standby:
        return "standby"
    if view.banned(f, s.node):
        return "banned here (migrate)"
    if f.drbd.disk in (Disk.FAILED, Disk.DISKLESS):
        return f"local disk {f.drbd.disk}"
    since = c.v.gateway_lower_since
    if since is not None and f.now - since >= s.gateway_dampen and c.rep is not None:
        return f"gateway score {f.gateway.score} < peer's {c.rep.gateway_score} for {f.now - since:.1f}s (dampen {s.gateway_dampen:g}s)"
    for vm in f.resources.vms:
        n = view.effective_fail_count(f, s, vm.name)
        if n >= s.migration_threshold and view.peer_fail_count(c.rep, vm.name) < s.migration_threshold:
            return f"VM {vm.name} failed {n} times here (migration_threshold {s.migration_threshold})"
    return None


def vm_duty(c: Ctx) -> Outcome | None:
    """Bring every VM to the target role in one decision (the executor starts or saves them in
    parallel, restores first, so that images still match the data when they are restored)."""
    f, s = c.f, c.s
    failed: list[str] = []
    first: Outcome | None = None
    for vm in f.resources.vms:
        out: Outcome | None = None
        if f.intent.target_role is TargetRole.STOPPED:
            if vm.state in (VmState.RUNNING, VmState.PAUSED):
                c.act(StopVm("held", vm.name, save=True))
                out = Phase.PRIMARY, Code.VM_FORCE_STOPPING, f"target role stopped (forcestop): saving {vm.name} and keeping it stopped"
        elif vm.state in (VmState.RUNNING, VmState.PAUSED, VmState.UNKNOWN):
            pass
        elif vm.state is VmState.CRASHED or vm.stop_cause is StopCause.CRASH:
            n = view.effective_fail_count(f, s, vm.name)
            if n >= s.migration_threshold:
                failed.append(f"{vm.name} ({n} failures here, {view.peer_fail_count(c.rep, vm.name)} on {s.peer})")
            else:
                c.act(StartVm("held", VmPlan(vm.name, vm.image if c.m.restore_stale_image and vm.image else None)))
                out = Phase.PRIMARY, Code.VM_RESTARTING_AFTER_CRASH, f"{vm.name} crashed ({n} of {s.migration_threshold} failures): restarting it here"
        else:
            plan = VmPlan(vm.name, vm.image if c.restorable(vm.image, None) else None)
            c.act(StartVm("held", plan))
            if vm.stop_cause is StopCause.OUTSIDE:
                out = Phase.PRIMARY, Code.VM_BROUGHT_BACK, f"{vm.name} was stopped outside the cluster; starting it again (not a failure; use forcestop to keep it stopped)"
            else:
                how = "restoring its forcestop image" if plan.restore else "cold boot"
                out = Phase.PRIMARY, Code.VM_STARTING, f"{vm.name} should run (target role started): {how}"
        if first is None:
            first = out
    if failed:
        c.alert("vm_failed", "VM stays stopped: " + ", ".join(failed))
        if first is None:
            return Phase.PRIMARY, Code.VM_FAILED_STAYS_STOPPED, "stays stopped, the others keep running: " + ", ".join(failed)
    return first


def new_grant(c: Ctx, kind: GrantKind) -> Grant:
    n = c.d.grant_counter + 1
    g = Grant(f"{c.s.node}-{c.f.local.incarnation}-{n}", kind, c.s.node, c.s.peer, c.f.local.incarnation, c.d.epoch,
              c.rep.incarnation if c.rep is not None else None)
    c.upd(grant_counter=n, grant_out=g)
    return g


def primary(c: Ctx) -> Outcome:
    """This node holds resources (or runs a sequence) and the peer is heard."""
    f, s = c.f, c.s
    out = drbd_fencing(c)
    if out is not None:
        return out
    if f.sequence is not None:
        return _sequence_phase(c), Code.SEQUENCE_IN_PROGRESS, f"{f.sequence.kind} sequence under gate {f.sequence.gate} since {f.sequence.started_at:.2f}"
    wait = c.recent_failure()
    if wait is not None:
        c.wait_until(wait)
        return Phase.PRIMARY, Code.SEQUENCE_FAILED_WAITING, f"last {f.last_result.kind if f.last_result else ''} sequence failed ({f.last_result.detail if f.last_result else ''}); retry after {wait:.2f}"
    if f.drbd.connection is Conn.STANDALONE and not f.drbd.split_brain and f.drbd.role is Role.PRIMARY:
        c.act(ReconnectDrbd())
        return Phase.PRIMARY, Code.RECONNECTING_DRBD, f"DRBD StandAlone and {s.peer} heard: connect so it resyncs"
    if c.d.grant_out is not None and c.d.grant_out.kind is GrantKind.HANDOVER:
        c.act(Demote(f"handover:{c.d.grant_out.grant_id}", DemoteMode.SAVE, c.d.grant_out))
        return Phase.DEMOTING, Code.HANDOVER_DEMOTING, f"handing over to {s.peer} ({c.d.grant_out}): saving VMs, then IP, unmount, DRBD Secondary"
    reason = move_reason(c)
    if reason is not None and c.rep is not None:
        if view.peer_can_take(f, s, c.rep) and c.status is PeerStatus.HEARD:
            g = new_grant(c, GrantKind.HANDOVER)
            c.act(Demote(f"handover:{g.grant_id}", DemoteMode.SAVE, g))
            return Phase.DEMOTING, Code.HANDOVER_DEMOTING, f"{reason}: handing over to {s.peer} ({g.grant_id}); saving VMs, then IP, unmount, DRBD Secondary"
        if f.local.shutting_down:
            c.act(Demote("stop", DemoteMode.STOP))
            return Phase.DEMOTING, Code.SHUTDOWN_STOPPING, f"clean stop and {s.peer} cannot take over: stopping the resources"
    if f.drbd.role is Role.PRIMARY and not view.fully_held(f):
        c.act(Promote("held", c.plans(None), False))
        return Phase.PROMOTING, Code.COMPLETING_PROMOTE, f"DRBD Primary but mounted={f.resources.mounted} ip={f.resources.ip}: completing the group"
    if f.drbd.role is not Role.PRIMARY:
        c.act(Demote("stop", DemoteMode.STOP))
        return Phase.DEMOTING, Code.CLEANING_PARTIAL, f"holds part of the group without DRBD Primary (mounted={f.resources.mounted} ip={f.resources.ip}): stopping it"
    out = vm_duty(c)
    if out is not None:
        return out
    if reason is not None:
        c.alert("move_blocked", f"{reason}, but {s.peer} cannot take over")
        return Phase.PRIMARY, Code.MOVE_WANTED_PEER_NOT_ELIGIBLE, f"{reason}, but {s.peer} cannot take over (eligible={c.rep.eligible if c.rep else '?'}, DRBD {f.drbd.connection}, peer disk {f.drbd.peer_disk})"
    return Phase.PRIMARY, Code.NO_ACTION_PRIMARY, f"active with epoch {c.d.epoch}; {s.peer} {c.status}; DRBD {f.drbd.connection} {f.drbd.disk}/{f.drbd.peer_disk}"


def _sequence_phase(c: Ctx) -> Phase:
    seq = c.f.sequence
    if seq is None:
        return Phase.PRIMARY
    return {"promote": Phase.PROMOTING, "demote": Phase.DEMOTING}.get(seq.kind.value, Phase.PRIMARY)


def s1a_holds(c: Ctx, g: Grant) -> str | None:
    """None when S1a allows promoting under grant ``g``; else what is missing."""
    rep, f = c.rep, c.f
    if c.status is not PeerStatus.HEARD or rep is None:
        return f"{c.s.peer} not heard"
    if rep.holds or rep.phase in view.ACTIVE_PHASES:
        return f"{c.s.peer} still holds resources or is {rep.phase}"
    if f.drbd.connection is not Conn.CONNECTED or f.drbd.peer_role is not Role.SECONDARY:
        return f"DRBD {f.drbd.connection}, peer role {f.drbd.peer_role}"
    if c.d.grant_ack != g or rep.grant != g:
        return "grant not acknowledged"
    return None


def secondary(c: Ctx) -> Outcome:
    """Nothing held here, no sequence running, the peer heard."""
    f, s, rep = c.f, c.s, c.rep
    assert rep is not None
    wait = c.recent_failure()
    offer = view.grant_offered_to_me(f, s)
    if f.local.shutting_down:
        return _leaving(c, offer, wait)
    if rep.holds or rep.phase in view.ACTIVE_PHASES:
        return Phase.SECONDARY, Code.NO_ACTION_SECONDARY, f"standby; {s.peer} is {rep.phase} with epoch {rep.epoch}"
    if f.drbd.connection is Conn.STANDALONE and not f.drbd.split_brain:
        c.act(ReconnectDrbd())
        return Phase.SECONDARY, Code.RECONNECTING_DRBD, f"DRBD StandAlone and {s.peer} heard: connect"
    if offer is not None:
        return _answer_offer(c, offer, wait)
    if c.d.grant_out is not None:
        if c.d.grant_out.kind is GrantKind.HANDOVER:
            return Phase.SECONDARY, Code.HANDOVER_GRANTED, f"demoted and granted {c.d.grant_out}; waiting for {s.peer} to acknowledge and promote"
        return Phase.SECONDARY, Code.GRANT_OUTSTANDING, f"{c.d.grant_out} out; waiting for {s.peer} to acknowledge and promote, or decline"
    mine = c.eligible
    if not mine and not rep.eligible:
        return Phase.SECONDARY, Code.ELECTION_NO_ELIGIBLE_NODE, f"neither node eligible (here: disk {f.drbd.disk}, banned={view.banned(f, s.node)}, standby={s.node in f.intent.standby}, DRBD config safe={f.drbd.config_safe})"
    if view.better_candidate(c.d, f, s, c.m):
        return Phase.SECONDARY, Code.ELECTION_WAITING_YIELD, f"better candidate (eligible={mine}, gateway {f.gateway.score} vs {rep.gateway_score}); waiting for {s.peer} to yield"
    if c.d.grant_ack is not None:
        return Phase.SECONDARY, Code.HANDOVER_WAITING_DRBD, f"acknowledged {c.d.grant_ack}; waiting"
    g = new_grant(c, GrantKind.YIELD)
    return Phase.SECONDARY, Code.ELECTION_YIELDING, f"{s.peer} is the better candidate (eligible={rep.eligible}, gateway {rep.gateway_score} vs {f.gateway.score}): yield {g.grant_id}"


def _leaving(c: Ctx, offer: Grant | None, wait: float | None) -> Outcome:
    """Clean stop, nothing held here, the peer heard. Leave once the peer runs the group or cannot take
    it. Before that: decline what it offers (a stopping node is not eligible), hand the group to it
    when nobody runs it (a yield), and stay while it promotes or demotes: leaving takes DRBD down,
    and a grantee's DRBD step needs it Connected (S1a), so leaving early leaves nobody active."""
    f, s, rep = c.f, c.s, c.rep
    assert rep is not None
    if rep.phase in (Phase.PROMOTING.value, Phase.DEMOTING.value):
        return Phase.SECONDARY, Code.SHUTDOWN_WAITING_HANDOVER, f"clean stop: waiting for {s.peer} to finish {rep.phase}"
    if rep.holds or rep.phase in view.ACTIVE_PHASES:
        return Phase.SECONDARY, Code.SHUTDOWN_READY, f"clean stop: {s.peer} is {rep.phase}; nothing held here; leaving"
    if offer is not None and c.d.declined != offer.grant_id:
        return _answer_offer(c, offer, wait)
    if c.d.grant_out is not None:
        return Phase.SECONDARY, Code.SHUTDOWN_WAITING_HANDOVER, f"clean stop: waiting for {s.peer} to take over ({c.d.grant_out.grant_id})"
    if view.peer_can_take(f, s, rep):
        g = new_grant(c, GrantKind.YIELD)
        return Phase.SECONDARY, Code.SHUTDOWN_WAITING_HANDOVER, f"clean stop and nobody active: yield {g.grant_id} to {s.peer} before leaving"
    return Phase.SECONDARY, Code.SHUTDOWN_READY, f"clean stop: nothing held here and {s.peer} cannot take over (eligible={rep.eligible}, DRBD {f.drbd.connection}); leaving"


def _answer_offer(c: Ctx, offer: Grant, wait: float | None) -> Outcome:
    f, s, rep = c.f, c.s, c.rep
    assert rep is not None
    if c.d.grant_ack == offer:
        if not c.eligible:
            c.upd(grant_ack=None, declined=offer.grant_id)
            return Phase.SECONDARY, Code.HANDOVER_DECLINED, f"declined {offer}: no longer eligible (disk {f.drbd.disk}, banned={view.banned(f, s.node)})"
        missing = s1a_holds(c, offer)
        if missing is not None:
            return Phase.SECONDARY, Code.HANDOVER_WAITING_DRBD, f"acknowledged {offer}; waiting: {missing}"
        if wait is not None:
            c.wait_until(wait)
            return Phase.SECONDARY, Code.SEQUENCE_FAILED_WAITING, f"last promote failed; retry after {wait:.2f}"
        blocker = c.promote_blocker(accept_data_loss=False)
        if blocker is not None:
            return Phase.SECONDARY, blocker[0], blocker[1]
        c.promote(f"grant:{offer.grant_id}", offer if offer.kind is GrantKind.HANDOVER else None, False)
        code = Code.HANDOVER_PROMOTING if offer.kind is GrantKind.HANDOVER else Code.ELECTION_PROMOTING
        return Phase.PROMOTING, code, f"{s.peer} {offer.kind} {offer.grant_id} acknowledged; peer Secondary, DRBD Connected: promote with epoch {c.d.epoch}"
    if c.d.grant_out is not None:
        mine = c.d.grant_out
        crossing = mine.kind is GrantKind.YIELD and offer.kind is GrantKind.YIELD and s.node < s.peer and rep.ack != mine.grant_id
        if not crossing:
            return Phase.SECONDARY, Code.GRANT_OUTSTANDING, f"{mine} out; not acknowledging {offer.grant_id}"
        c.upd(grant_out=None)
    if not c.eligible:
        if c.d.declined != offer.grant_id:
            c.upd(declined=offer.grant_id)
        return Phase.SECONDARY, Code.HANDOVER_DECLINED, f"declined {offer}: not eligible (disk {f.drbd.disk}, banned={view.banned(f, s.node)}, standby={s.node in f.intent.standby})"
    c.upd(grant_ack=offer, declined=None)
    return Phase.SECONDARY, Code.HANDOVER_ACKNOWLEDGED, f"acknowledged {offer}; this node counts as active from now on"


def held_without_peer(c: Ctx, code: Code, sentence: str) -> Outcome:
    """Duties of a node holding resources while the peer is not usable: keep them, answer DRBD, keep VMs up."""
    out = drbd_fencing(c)
    if out is not None:
        return out
    if c.f.sequence is not None:
        return _sequence_phase(c), Code.SEQUENCE_IN_PROGRESS, f"{c.f.sequence.kind} sequence under gate {c.f.sequence.gate}"
    if c.f.drbd.role is Role.PRIMARY and view.fully_held(c.f) and c.recent_failure() is None:
        out = vm_duty(c)
        if out is not None:
            return out
    return Phase.PRIMARY, code, sentence
