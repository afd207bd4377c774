"""The independent oracle: what must never happen, checked from the outside.

Written without the policy's helpers (it imports only the policy's data
types): each check re-derives its condition from the facts the policy was
given, or from the simulated world's ground truth.

Two layers:
- ``check_decision`` (pure; also used by the Hypothesis properties): does a
  decision emit an action that breaks S1-S9 given its inputs?
- ``Oracle`` (world): never two nodes holding any resource at the same
  virtual instant; a takeover only from a peer that is off or that granted
  with a token this node acknowledged (or under an operator's record); no
  acknowledged write missing on the next Primary; no promotion of a
  non-UpToDate disk without the operator's data-loss confirmation; no
  restore of a consumed or stale save image.
"""

from __future__ import annotations

import dataclasses

from clever_cluster.policy import (
    AnswerFencePeer,
    Conn,
    Decision,
    Demote,
    DisconnectDrbd,
    Disk,
    Evidence,
    Facts,
    FencePeer,
    ImageToken,
    OutdateLocalDisk,
    PolicyState,
    Promote,
    ReconnectDrbd,
    ResumeIo,
    Role,
    SelfFence,
    Settings,
    StartVm,
    StopVm,
)

ACTIVE = {"PRIMARY", "PROMOTING", "DEMOTING"}


def _min_age(f: Facts) -> float | None:
    ages = [ln.age for ln in f.peer.links if ln.age is not None]
    return min(ages) if ages else None


def _holds(f: Facts) -> bool:
    r = f.resources
    return (f.drbd.role is Role.PRIMARY or r.mounted or r.ip
            or any(v.state.value in ("running", "paused") for v in r.vms))


def check_decision(prev: PolicyState, f: Facts, s: Settings, d: Decision, *, heard_this_boot: bool,
                   free_since: float | None = None) -> list[str]:
    """Violations of S1-S9 by the actions of one decision. ``free_since``: when this node last
    stopped being kept from fencing (it left maintenance or BLOCKED); the priority delay counts from
    the later of that and the loss, so that a loss that began while it could not act is not a head
    start in a fence race."""
    out: list[str] = []
    rep = f.peer.report
    age = _min_age(f)
    heard_now = rep is not None and age is not None and age < s.heartbeat_timeout
    holds = _holds(f)
    ann = d.state.published
    ep = d.state.durable.episode
    # a record confirmed before DRBD last connected to the peer says nothing about the peer that is there now
    since = f.drbd.connected_since
    records = [r for r in f.fencing.records if ep is not None and r.episode == ep and (since is None or r.confirmed_at >= since)]
    banned = any(b.node == s.node and (b.until is None or f.now < b.until) for b in f.intent.bans)
    for a in d.actions:
        if isinstance(a, Promote) and a.gate != "held" and not (holds and f.drbd.role is Role.PRIMARY):
            by_grant = (heard_now and rep is not None and not rep.holds and rep.phase not in ACTIVE
                        and f.drbd.connection is Conn.CONNECTED and f.drbd.peer_role is Role.SECONDARY
                        and rep.grant is not None and rep.grant.grantee == s.node and ann is not None
                        and ann.ack == rep.grant.grant_id)
            by_record = bool(records) and not heard_now and all(
                rep is None or r.episode.peer_boot_id in (None, rep.boot_id) for r in records)
            if not (by_grant or by_record):
                out.append("S1: promote with neither an acknowledged grant from a Secondary connected peer nor a fence record of the current episode")
            accept = any(r.accept_data_loss for r in records)
            if f.drbd.disk is not Disk.UP_TO_DATE and not (f.drbd.disk is Disk.CONSISTENT and a.force and accept):
                out.append(f"S3: promote of a {f.drbd.disk} disk (force={a.force}, data loss accepted={accept})")
            if f.drbd.split_brain:
                out.append("S3: promote on split brain")
            if f.drbd.config_safe is not True:
                out.append("S9: promote with DRBD configuration not known safe")
            operator = any(r.evidence is Evidence.OPERATOR for r in records)
            if not heard_this_boot and not operator:
                out.append("S4: promote before the peer was heard this boot")
            if f.stalled:
                out.append("stall: promote right after a stall")
        if isinstance(a, FencePeer):
            if heard_now:
                out.append("S2/S1: fence of a peer that is heard")
            if not heard_this_boot:
                out.append("S4: fence before the peer was heard this boot")
            if f.stalled:
                out.append("stall: fence right after a stall")
            if not a.operator:
                loss_start = f.now - age + s.heartbeat_timeout if age is not None else f.now - s.heartbeat_timeout
                fr = f.gateway.fresh
                if fr is None or not fr.reachable or fr.taken_at < loss_start - 1e-9 or f.now - fr.taken_at > s.heartbeat_timeout:
                    out.append(f"S7: fence without a fresh reachable gateway probe taken since the loss at {loss_start:.2f} (probe {fr})")
                if f.drbd.disk is not Disk.UP_TO_DATE or f.drbd.config_safe is not True or f.drbd.split_brain or (banned and not holds):
                    out.append(f"S8: fence although this node could not take over (disk {f.drbd.disk}, config safe {f.drbd.config_safe}, banned {banned})")
                # the grantee of an outstanding grant counts as active from its acknowledgement, heard or not
                peer_active = rep is not None and (rep.holds or rep.phase in ACTIVE or prev.durable.grant_out is not None)
                me_active = holds or (ann is not None and ann.ack is not None)
                first = f.fencing.attempt is None or f.fencing.attempt.episode != a.episode   # the delay comes before the first attempt only
                waited_from = max(loss_start, free_since if free_since is not None else loss_start)
                if first and peer_active and not me_active and not f.fencing.peer_reported_off and age is not None \
                        and f.now - waited_from < s.priority_delay - 1e-9:
                    out.append(f"priority delay: fenced an active peer {f.now - waited_from:.2f}s after the loss"
                               f"{' (counted from when this node could act)' if waited_from > loss_start else ''} (< {s.priority_delay:g}s)")
        if isinstance(a, DisconnectDrbd) and not records:
            out.append("S1b: DRBD disconnected without a fence record of the current episode")
        if isinstance(a, OutdateLocalDisk) and f.drbd.role is Role.PRIMARY:
            out.append("outdate of this node's disk while it is DRBD Primary")
        if isinstance(a, AnswerFencePeer) and a.exit_code == 7 and not records:
            out.append("fence-peer answered 7 without a fence record of the current episode")
        if isinstance(a, AnswerFencePeer) and a.exit_code == 4 and not (
                f.drbd.peer_disk is Disk.OUTDATED or (heard_now and rep is not None and rep.disk in (Disk.OUTDATED, Disk.INCONSISTENT))):
            out.append("fence-peer answered 4 without the peer's disk reported Outdated")
        if isinstance(a, AnswerFencePeer) and a.exit_code not in (1, 4, 7):
            out.append(f"fence-peer answered {a.exit_code}")
        if f.intent.maintenance and isinstance(a, (FencePeer, Promote, Demote, StartVm, StopVm, DisconnectDrbd, ReconnectDrbd, ResumeIo, SelfFence)):
            out.append(f"S6: {type(a).__name__} in maintenance")
    if heard_now and rep is not None and rep.holds and holds and not f.intent.maintenance:
        stops = any(isinstance(a, (Demote, SelfFence)) for a in d.actions) or f.sequence is not None
        if prev.durable.epoch <= rep.epoch and d.state.durable.epoch <= rep.epoch and not stops:
            out.append(f"S5: both hold resources and epoch {prev.durable.epoch} <= peer's {rep.epoch}, yet no stop")
    if heard_now and rep is not None and holds and not f.intent.maintenance \
            and any(x.node == s.node and x.boot_id == f.local.boot_id for x in rep.fenced) \
            and not (any(isinstance(a, (Demote, SelfFence)) for a in d.actions) or f.sequence is not None):
        out.append("S5: the peer reports this boot fenced, yet no stop")
    return out


@dataclasses.dataclass
class Violation:
    time: float
    kind: str
    detail: str

    def __str__(self) -> str:
        return f"t={self.time:.2f} {self.kind}: {self.detail}"


class Oracle:
    """World-level invariants, fed by the simulator with ground truth."""

    def __init__(self) -> None:
        self.violations: list[Violation] = []
        self.acked: set[int] = set()
        self.consumed: set[tuple[str, str]] = set()

    def clone(self) -> Oracle:
        c = Oracle()
        c.violations = list(self.violations)
        c.acked = set(self.acked)
        c.consumed = set(self.consumed)
        return c

    def fail(self, t: float, kind: str, detail: str) -> None:
        self.violations.append(Violation(t, kind, detail))

    def write_acked(self, wid: int) -> None:
        self.acked.add(wid)

    def waive_data_loss(self) -> None:
        """The operator accepted data loss: earlier acknowledged writes are no longer owed."""
        self.acked.clear()

    def exclusive(self, t: float, holders: dict[str, list[str]]) -> None:
        for res, nodes in holders.items():
            if len(nodes) > 1:
                self.fail(t, "two holders", f"{res} held by {', '.join(nodes)}")

    def promoted(self, t: float, node: str, peer_off: bool, peer_granted: bool, operator: bool,
                 missing_writes: list[int], disk: Disk, forced_with_acceptance: bool) -> None:
        if not (peer_off or peer_granted or operator):
            self.fail(t, "takeover", f"{node} promoted while its peer is on and did not grant to it")
        if missing_writes:
            self.fail(t, "lost writes", f"{node} promoted without acknowledged writes {missing_writes[:5]}")
        if disk is not Disk.UP_TO_DATE and not forced_with_acceptance:
            self.fail(t, "disk", f"{node} promoted a {disk} disk without the operator's data-loss confirmation")

    def restored(self, t: float, node: str, vm: str, token: ImageToken, current_uuid: str, consumed: bool) -> None:
        if consumed or (vm, f"{token}") in self.consumed:
            self.fail(t, "image", f"{node} restored {vm} from an image already consumed")
        if token.data_uuid != current_uuid:
            self.fail(t, "stale image", f"{node} restored {vm} from an image of data {token.data_uuid}, current data is {current_uuid}")
        self.consumed.add((vm, f"{token}"))
