"""Losing the peer (DESIGN §4.4): grace while DRBD is still Connected, the
fence gates S7 and S8, who waits the priority delay, fencing with retries,
and what follows a confirmed fence.

Invariants:
- ``FencePeer`` is emitted only when: the episode is open and has no record,
  no stall window is running, the delay decided once for the episode has
  passed, S8 holds (or an operator asked), and a gateway probe requested at
  this decision point came back reachable (S7); never while a record of the episode is on disk but
  void (the peer came back): the coordinator would answer it with that record, so the decision
  would alternate between probing and "fencing" without a fence.
- With unchanged facts a decision that fences fences again, for the same reason (the action is
  repeated until the attempt shows in the facts; the alert is raised on the change of reason only).
- After a confirmed fence a node that holds nothing promotes only through
  ``promote_blocker`` (S3, S9) and disconnects a dead peer still shown
  Connected first.
"""

from __future__ import annotations

from . import view
from .actions import DisconnectDrbd, FencePeer, ProbeGateway, Promote, ReconnectDrbd, SelfFence
from .context import Ctx, Outcome
from .facts import FenceRecord
from .model import Conn, Disk, Evidence, LossEpisode, Phase, Role
from .placement import OUTDATED_OR_WORSE, drbd_fencing, held_without_peer, vm_duty
from .reasons import Code
from .view import PeerStatus


def could_take_over(c: Ctx) -> str | None:
    """S8: None when this node could run the resources after fencing; else why not."""
    f, s = c.f, c.s
    if not view.disk_ok(f.drbd.disk, c.m):
        return f"local disk {f.drbd.disk}"
    if f.drbd.config_safe is not True:
        return "DRBD configuration not known safe"
    if f.drbd.split_brain:
        return "split brain"
    if c.held:
        return None   # already active: a ban only asks for a handover, which needs a live peer
    if view.banned(f, s.node):
        return "banned here"
    if view.epoch_behind(c.d):
        return f"epoch {c.d.epoch} behind the peer's {c.d.peer_epoch_seen}"
    return None


def _self_active(c: Ctx) -> bool:
    seq = c.f.sequence
    return c.held or c.d.grant_ack is not None or (seq is not None and seq.kind.value == "promote")


def _decide_delay(c: Ctx, lost_at: float) -> float:
    f, s = c.f, c.s
    jitter = f.random_draw * s.random_delay
    if c.v.operator_fence or _self_active(c):
        return 0.0
    if view.peer_was_active(c.d, c.rep):
        if c.m.skip_priority_delay:
            return 0.0
        return s.priority_delay + jitter
    # nobody active: the election order is the bias
    if view.better_candidate(c.d, f, s, c.m):
        return jitter
    return s.priority_delay + jitter


def peer_gone(c: Ctx) -> Outcome:
    """The peer is LOST or LEFT; the episode is open."""
    f, s = c.f, c.s
    ep = c.d.episode
    assert ep is not None
    rec = view.record_for(f, ep)
    if rec is not None:
        return after_fence(c, rec)
    if c.status is PeerStatus.LEFT and not c.v.operator_fence:
        if c.held:
            return held_without_peer(c, Code.PEER_LEFT, f"{s.peer} left cleanly; carrying on")
        return Phase.SECONDARY, Code.PEER_LEFT, f"{s.peer} left cleanly with nothing held; waiting for it (or `clevervm confirm-fenced {s.peer}`)"
    lost_at = c.v.lost_at
    if lost_at is None:
        return _phase_when_waiting(c), Code.STALL_REOBSERVING, f"re-observing until {c.v.observe_until:.2f} before acting on the loss"
    if f.drbd.connection is Conn.CONNECTED and not c.v.operator_fence:
        if _self_active(c):
            c.alert("peer_daemon_silent", f"{s.peer} silent but DRBD Connected")
            return held_without_peer(c, Code.PEER_DAEMON_SILENT, f"{s.peer} silent for {f.now - lost_at + s.heartbeat_timeout:.1f}s but DRBD still replicates to it; no fence while active")
        if f.now < lost_at + s.silent_peer_grace:
            c.alert("peer_silent", f"{s.peer} silent but DRBD Connected")
            c.wait_until(lost_at + s.silent_peer_grace)
            return Phase.SECONDARY, Code.PEER_SILENT_DRBD_CONNECTED, f"no heartbeat from {s.peer} but DRBD Connected; no fence before {lost_at + s.silent_peer_grace:.2f} (silent_peer_grace {s.silent_peer_grace:g}s)"
    if f.now < c.v.observe_until:
        c.wait_until(c.v.observe_until)
        return _phase_when_waiting(c), Code.STALL_REOBSERVING, f"loop stalled; re-observing until {c.v.observe_until:.2f}"
    if f.drbd.role is Role.PRIMARY:
        out = drbd_fencing(c)   # only a DRBD-side Outdated peer can answer here; the record path is above
        if out is not None:
            return out
    if c.held and f.drbd.role is Role.PRIMARY and f.drbd.peer_disk in OUTDATED_OR_WORSE and not c.v.operator_fence:
        # DRBD outdated the peer (a graceful leave, or fence-peer answered 4): it cannot promote, so there
        # is nothing to fence; a restarted daemon that missed the peer's `leaving` learns it here
        return held_without_peer(c, Code.PEER_LOST_OUTDATED, f"{s.peer} lost ({ep}), but DRBD shows its disk {f.drbd.peer_disk}: it cannot take over; no fence while active")
    why_not = could_take_over(c)
    if why_not is not None and not c.v.operator_fence:
        c.alert("cannot_take_over", f"{s.peer} lost; not fencing: {why_not}")
        return (Phase.PRIMARY if c.held else Phase.SECONDARY), Code.PEER_LOST_CANNOT_TAKE_OVER, f"{s.peer} lost ({ep}); this node could not take over ({why_not}); no fence (S8)"
    att = f.fencing.attempt
    # Once a fence has failed, the sentence (status, STATUS=, journal) names the operator's way out.
    way_out = f"if you have checked that {s.peer} is powered off: clevervm confirm-fenced {s.peer}"
    if att is not None and att.running and att.episode == ep:
        failed = f"; failed {f.fencing.failures}x so far; {way_out}" if f.fencing.failures > 0 else ""
        return Phase.FENCING, Code.FENCE_IN_PROGRESS, f"fencing {s.peer} since {att.started_at:.2f} ({ep}){failed}"
    if att is not None and att.episode == ep and not att.running and f.fencing.failures > 0:
        retry_at = (att.finished_at or att.started_at) + s.retry_wait(f.fencing.failures)
        if f.now < retry_at:
            c.alert("fence_failing", f"fence of {s.peer} failed {f.fencing.failures}x: {att.detail}")
            c.wait_until(retry_at)
            return Phase.FENCING, Code.FENCE_FAILED_RETRYING, f"fence of {s.peer} failed {f.fencing.failures}x ({att.detail}); retry at {retry_at:.2f}; frozen; {way_out}"
    returned = _void_record(c, ep)
    if returned is not None and f.drbd.connection is not Conn.CONNECTED:
        # The peer came back (DRBD connected after the record) and is gone again before its daemon was
        # ever heard: a new loss. A new episode needs its own fence (the coordinator answers an
        # episode that has a record with that record, which proves nothing now); the usual delay,
        # S7 probe and fence follow from the next decision.
        n = c.d.episode_counter + 1
        c.upd(episode_counter=n, episode=LossEpisode(ep.peer, ep.peer_incarnation, ep.peer_boot_id, n), episode_boot=f.local.boot_id)
        c.vol(lost_at=f.now, fence_not_before=None, probe_requested_at=None)
        c.alert("fenced_peer_returned", f"{s.peer} came back after its fence and is gone again: a new loss episode")
        return _phase_when_waiting(c), Code.FENCED_PEER_RETURNED, (
            f"{s.peer} was confirmed off at {returned.confirmed_at:.2f} ({ep}), came back (DRBD connected at "
            f"{f.drbd.connected_since:.2f}) and is gone again before its daemon was heard: new loss episode {n}")
    if returned is not None:
        # The episode's fence was confirmed, then DRBD talked to the peer again (powered back on,
        # `fencing.after = "on"`): the record no longer proves it off, and the coordinator would only
        # answer a new FencePeer with that same record. Its new boot is passive until it hears us (S4):
        # while DRBD stays connected to it, wait for its daemon (the episode closes then) rather than
        # fence in a loop or promote without evidence.
        c.alert("fenced_peer_returned", f"{s.peer} was confirmed off at {returned.confirmed_at:.2f} and is back; waiting for its daemon")
        return _phase_when_waiting(c), Code.FENCED_PEER_RETURNED, (
            f"{s.peer} was confirmed off at {returned.confirmed_at:.2f} ({ep}) but DRBD connected to it at {f.drbd.connected_since:.2f}: "
            f"it is back and that record proves nothing now; not fencing it again, not promoting; waiting to hear its daemon")
    not_before = c.v.fence_not_before
    if not_before is None:
        not_before = lost_at + _decide_delay(c, lost_at)
        c.vol(fence_not_before=not_before)
    if f.fencing.peer_reported_off and view.peer_was_active(c.d, c.rep):
        not_before = lost_at    # re-read at each decision: the device reports the peer's machine OFF now
    if f.now < not_before:
        c.wait_until(not_before)
        why = (f"was active: priority_delay {s.priority_delay:g}s + jitter" if view.peer_was_active(c.d, c.rep)
               else "nobody was active: the election order decides the delay")
        return Phase.FENCING, Code.PEER_LOST_WAITING_DELAY, f"{s.peer} lost at {lost_at:.2f} and {why}; waiting until {not_before:.2f} before fencing"
    if not c.m.drop_s7:
        fresh = f.gateway.fresh
        req = c.v.probe_requested_at
        if req is not None and (req < not_before or (fresh is not None and fresh.taken_at >= req
                                                     and f.now - fresh.taken_at > s.heartbeat_timeout)):
            req = None   # taken before the delay ended, or too old: not "at decision time"
        if req is None or fresh is None or fresh.taken_at < req:
            if req is None or f.now - req > 2 * s.heartbeat_timeout:
                c.vol(probe_requested_at=f.now)
                c.act(ProbeGateway(f.now))
            elif req != c.v.probe_requested_at:
                c.vol(probe_requested_at=req)
            if fresh is not None and not fresh.reachable and fresh.taken_at >= lost_at:
                return (Phase.PRIMARY if c.held else Phase.FENCING), Code.PEER_LOST_NO_GATEWAY, f"{s.peer} lost; gateway unreachable at {fresh.taken_at:.2f}; probing again (S7)"
            return Phase.FENCING, Code.PEER_LOST_PROBING_GATEWAY, f"{s.peer} lost; fresh gateway probe requested for the fence gate (S7)"
        if not fresh.reachable:
            if f.now - fresh.taken_at >= s.retry_backoff:
                c.vol(probe_requested_at=None)
            c.alert("no_gateway", f"{s.peer} lost and no gateway reachable here: probably isolated; not fencing")
            why = f"{s.peer} lost, fresh gateway probe at {fresh.taken_at:.2f}: {fresh.reachable if fresh.reachable is not None else 'no data'} reachable; probably isolated, no fence (S7)"
            # Isolated means: the dampened score reads 0 (no gateway for a full `dampen`), the fresh probe
            # failed too, and the peer has been lost for `dampen`; one lost probe round is not enough.
            if c.held and s.self_fence_when_isolated and f.gateway.score == 0 and f.now - lost_at >= s.gateway_dampen:
                # DESIGN 4.4: an isolated active keeps its resources (DRBD keeps its writes frozen) and,
                # with a hardware watchdog, stops feeding it, so that the peer (which can reach the
                # gateway) may fence or confirm it. Only once the isolation outlasted the gateway
                # dampening: one lost probe round must not reset the active.
                c.act(SelfFence(f"isolated: {s.peer} lost and no gateway reachable for {f.now - lost_at:.1f}s"))
                why += f"; isolated for {f.now - lost_at:.1f}s (dampen {s.gateway_dampen:g}s): the hardware watchdog is no longer fed"
            return (Phase.PRIMARY if c.held else Phase.FENCING), Code.PEER_LOST_NO_GATEWAY, why
    # probe_requested_at is kept: the same fresh probe still opens the gate if this decision is taken
    # again before the attempt shows in the facts (the action is repeated until it does; the executor
    # ignores a repeat while a fence runs); it goes stale after heartbeat_timeout and a retry re-probes
    c.act(FencePeer(ep, f.now - lost_at, operator=c.v.operator_fence))
    c.alert("fencing", f"fencing {s.peer}")
    who = "operator request" if c.v.operator_fence else ("this node is active" if _self_active(c) else f"waited {f.now - lost_at:.2f}s")
    age = view.min_link_age(f)
    since = f"since {f.now - age:.2f}" if age is not None else "this daemon run"
    return Phase.FENCING, Code.PEER_LOST_FENCING, f"fencing {s.peer}: no heartbeat on any link {since}; gateway reachable; {who}"


def _void_record(c: Ctx, ep: LossEpisode) -> FenceRecord | None:
    """A record of this episode on disk that ``view.record_for`` voids (DRBD connected to the peer
    after it was confirmed), or None."""
    return next((r for r in c.f.fencing.records if r.episode == ep), None)


def _phase_when_waiting(c: Ctx) -> Phase:
    return Phase.PRIMARY if c.held else Phase.SECONDARY


def after_fence(c: Ctx, rec: FenceRecord) -> Outcome:
    f, s = c.f, c.s
    ep = rec.episode
    how = "operator confirmation" if rec.evidence is Evidence.OPERATOR else f"device evidence (machine {rec.machine_id})"
    if c.held or (f.sequence is not None and f.sequence.kind.value == "promote"):
        bumped = c.bump_epoch(f"episode:{ep.counter}") if c.held and f.drbd.role is Role.PRIMARY else False
        out = drbd_fencing(c)
        if f.drbd.connection is Conn.CONNECTED:
            c.act(DisconnectDrbd(ep))
            return Phase.PRIMARY, Code.FENCE_CONFIRMED_DISCONNECTING, f"{s.peer} confirmed off ({how}); DRBD still shows it Connected: disconnect"
        if out is not None:
            return out
        if f.sequence is not None:
            return Phase.PROMOTING if f.sequence.kind.value == "promote" else Phase.PRIMARY, Code.SEQUENCE_IN_PROGRESS, f"{f.sequence.kind} sequence under gate {f.sequence.gate}"
        if f.drbd.connection is Conn.STANDALONE and not f.drbd.split_brain and f.drbd.role is Role.PRIMARY:
            c.act(ReconnectDrbd())
            return Phase.PRIMARY, Code.RECONNECTING_DRBD, f"{s.peer} is off; reconnect DRBD so it resyncs when it returns"
        if bumped:
            return Phase.PRIMARY, Code.PRIMARY_AFTER_FENCE, f"{s.peer} confirmed off ({how}, {ep}); carrying on with epoch {c.d.epoch}"
        if f.drbd.role is Role.PRIMARY and not view.fully_held(f) and c.recent_failure() is None:
            c.act(Promote(f"episode:{ep.counter}", c.plans(None), False))
            return Phase.PROMOTING, Code.COMPLETING_PROMOTE, f"DRBD Primary after the fence of {s.peer}; completing the group"
        out = vm_duty(c) if c.recent_failure() is None else None
        if out is not None:
            return out
        return Phase.PRIMARY, Code.NO_ACTION_PRIMARY, f"active with epoch {c.d.epoch}; {s.peer} confirmed off ({ep})"
    if f.sequence is not None:
        return Phase.DEMOTING, Code.SEQUENCE_IN_PROGRESS, f"{f.sequence.kind} sequence under gate {f.sequence.gate}"
    if f.drbd.connection is Conn.CONNECTED:
        c.act(DisconnectDrbd(ep))
        return Phase.FENCING, Code.FENCE_CONFIRMED_DISCONNECTING, f"{s.peer} confirmed off ({how}); DRBD still shows it Connected: disconnect before promoting"
    blocker = c.promote_blocker(accept_data_loss=rec.accept_data_loss)
    if blocker is not None:
        if f.drbd.connection is Conn.STANDALONE and not f.drbd.split_brain:
            c.act(ReconnectDrbd())     # not promoting: let the peer resync when it returns
        c.alert("promote_refused", blocker[1])
        return Phase.SECONDARY, blocker[0], f"{s.peer} confirmed off ({how}) but not promoting: {blocker[1]}"
    wait = c.recent_failure()
    if wait is not None:
        c.wait_until(wait)
        return Phase.SECONDARY, Code.SEQUENCE_FAILED_WAITING, f"last promote failed; retry after {wait:.2f}"
    force = rec.accept_data_loss and f.drbd.disk is Disk.CONSISTENT
    c.promote(f"episode:{ep.counter}", None, force)
    if rec.evidence is Evidence.OPERATOR:
        return Phase.PROMOTING, Code.PROMOTE_AFTER_OPERATOR_CONFIRM, f"operator confirmed {s.peer} off ({ep}{', data loss accepted' if rec.accept_data_loss else ''}): promote with epoch {c.d.epoch}"
    return Phase.PROMOTING, Code.PROMOTE_AFTER_FENCE, f"{s.peer} confirmed off ({how}, {ep}): promote with epoch {c.d.epoch}, cold-boot the VMs"
