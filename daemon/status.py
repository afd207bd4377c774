"""The status document (``docs/status-schema.md``): what `clevervm status --json`, `why --json`,
metrics and the web console read.

Built from the same world view the policy sees (a fresh snapshot mapped to
facts) plus the current decision. ``why`` adds the inputs that mattered for
the current reason code, grouped, and on a node that is not active the
reasons it is not ("why not promoted").

Invariants:
- ``schema`` changes only with an incompatible change of this document
  (fields are only ever added within a version).
- Times are wall-clock seconds since the epoch (``*_at``) or durations in
  seconds (``*_seconds``); nothing monotonic leaks out.
- Building it never raises for a part that has no data: that part is null.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from typing import TYPE_CHECKING, Any

from clever_cluster import policy as P
from clever_cluster.policy import view as V
from clever_cluster.policy.reasons import TABLE, Code

from .clilocal import disk_usage
from .decisionlog import message_id
from .heartbeat.facts import HEARD
from .heartbeat.service import status_dict
from .mapping import to_wall, vm_state
from .resources.threads import OBSERVE, run_in

if TYPE_CHECKING:
    from .runtime import Runtime

SCHEMA = 1
USAGE_TIMEOUT = 2.0

LOSS = {Code.PEER_LOST_NO_GATEWAY, Code.PEER_LOST_CANNOT_TAKE_OVER, Code.PEER_LOST_WAITING_DELAY, Code.PEER_LOST_PROBING_GATEWAY,
        Code.PEER_LOST_FENCING, Code.FENCE_IN_PROGRESS, Code.FENCE_FAILED_RETRYING, Code.FENCED_PEER_RETURNED, Code.FENCE_CONFIRMED_DISCONNECTING,
        Code.PROMOTE_AFTER_FENCE, Code.PRIMARY_AFTER_FENCE, Code.PEER_SILENT_DRBD_CONNECTED, Code.PEER_DAEMON_SILENT,
        Code.STALL_REOBSERVING, Code.PEER_LEFT, Code.PEER_RESTARTING, Code.PROMOTE_AFTER_OPERATOR_CONFIRM,
        Code.STARTING_WAITING_FOR_PEER}
PLACEMENT = {Code.HANDOVER_DEMOTING, Code.HANDOVER_GRANTED, Code.HANDOVER_ACKNOWLEDGED, Code.HANDOVER_DECLINED,
             Code.HANDOVER_PROMOTING, Code.HANDOVER_WAITING_DRBD, Code.MOVE_WANTED_PEER_NOT_ELIGIBLE, Code.GRANT_OUTSTANDING,
             Code.ELECTION_YIELDING, Code.ELECTION_WAITING_YIELD, Code.ELECTION_PROMOTING, Code.ELECTION_NO_ELIGIBLE_NODE,
             Code.NO_ACTION_PRIMARY, Code.NO_ACTION_SECONDARY, Code.SHUTDOWN_WAITING_HANDOVER, Code.SHUTDOWN_READY,
             Code.SHUTDOWN_STOPPING}
DRBD_FENCING = {Code.OUTDATING_PEER, Code.PEER_OUTDATED_ANSWERED, Code.RESUMING_IO, Code.OUTDATING_LOCAL_DISK, Code.RECONNECTING_DRBD}
BLOCKS = {Code.BLOCKED_SPLIT_BRAIN, Code.BLOCKED_UNSAFE_DRBD_CONFIG, Code.BLOCKED_MISFENCE, Code.UNBLOCKED, Code.UNBLOCK_REFUSED,
          Code.BOTH_ACTIVE_STOPPING, Code.BOTH_ACTIVE_PEER_MUST_STOP, Code.OWN_INCARNATION_FENCED, Code.PEER_INCOMPATIBLE,
          Code.PEER_KEY_MISMATCH, Code.PROMOTE_REFUSED_DISK, Code.PROMOTE_REFUSED_CONSISTENT, Code.PROMOTE_REFUSED_EPOCH_BEHIND,
          Code.PROMOTE_REFUSED_CONFIG}
RESOURCES = {Code.COMPLETING_PROMOTE, Code.CLEANING_PARTIAL, Code.SEQUENCE_IN_PROGRESS, Code.SEQUENCE_FAILED_WAITING,
             Code.VM_RESTARTING_AFTER_CRASH, Code.VM_BROUGHT_BACK, Code.VM_STARTING, Code.VM_FAILED_STAYS_STOPPED,
             Code.VM_FORCE_STOPPING, Code.MAINTENANCE_OBSERVING}


def _r(x: float | None, nd: int = 3) -> float | None:
    return None if x is None else round(x, nd)


def _age(now: float, t: float | None) -> float | None:
    return None if t is None else round(now - t, 3)


def ineligible(rt: Runtime, facts: P.Facts) -> list[str]:
    """Why this node may not run the resources now (empty: it may); mirrors ``policy.view.self_eligible``."""
    d, f, s = rt.loop.state.durable, facts, rt.settings
    out = []
    if f.drbd.disk is not P.Disk.UP_TO_DATE:
        out.append(f"local DRBD disk is {f.drbd.disk}, not UpToDate")
    if f.drbd.split_brain:
        out.append("DRBD reports split brain")
    if f.drbd.config_safe is not True:
        out.append("DRBD configuration " + ("not checked yet" if f.drbd.config_safe is None else f"unsafe: {f.drbd.config_problem}"))
    if V.banned(f, s.node):
        out.append("banned here (clevervm migrate; lift with clevervm unmigrate)")
    if s.node in f.intent.standby:
        out.append("in standby (clevervm unstandby)")
    if f.intent.maintenance:
        out.append("maintenance mode is on")
    if d.block is not None:
        out.append(f"blocked: {d.block.detail}")
    if d.peer_heard_boot != f.local.boot_id:
        out.append(f"{s.peer} not heard yet since this machine booted (S4)")
    if f.local.shutting_down:
        out.append("this daemon is stopping")
    return out


def active_node(rt: Runtime, facts: P.Facts) -> tuple[str | None, str]:
    held = V.holds(facts)
    rep = facts.peer.report
    peer_heard = P.peer_status(facts, rt.settings) is P.PeerStatus.HEARD
    peer_holds = rep is not None and peer_heard and (rep.holds or rep.phase in V.ACTIVE_PHASES)
    if held and peer_holds:
        return None, "both nodes report resources: see the decision"
    if held:
        return rt.node, "this node holds " + ", ".join(_held_list(facts))
    if peer_holds and rep is not None:
        return rt.peer, f"{rt.peer} reports phase {rep.phase} holding resources"
    if not peer_heard and rep is not None and rep.holds:
        return None, f"{rt.peer} is not heard; it held resources when last heard"
    return None, "no node holds the resources"


def _held_list(f: P.Facts) -> list[str]:
    out = []
    if f.drbd.role is P.Role.PRIMARY:
        out.append("DRBD Primary")
    if f.resources.mounted:
        out.append("the filesystem")
    if f.resources.ip:
        out.append("the floating IP")
    out += [f"VM {v.name}" for v in f.resources.vms if V.vm_held(v)]
    return out


def predicted_failover(rt: Runtime) -> dict[str, Any]:
    """Worst-case unplanned failover time from the configured timings (DESIGN section 10)."""
    cfg = rt.cfg
    detect = cfg.heartbeat.timeout + cfg.heartbeat.interval
    delay = cfg.fencing.priority_delay + cfg.fencing.random_delay
    fence = sum(a.timeout for lvl in rt.levels for a in lvl)
    level1 = sum(a.timeout for a in rt.levels[0]) if rt.levels else 0.0
    start = 3 * cfg.drbd.command_timeout + cfg.filesystem.mount_timeout + rt.group.ip.start_budget() + cfg.vms.start_timeout
    return {
        "detect_seconds": round(detect, 3), "priority_delay_seconds": round(delay, 3),
        "fence_worst_seconds": round(fence, 3), "fence_level1_seconds": round(level1, 3), "start_worst_seconds": round(start, 3),
        "worst_case_seconds": round(detect + delay + fence + start, 3),
        "when_peer_reads_off_seconds": round(detect + level1 + start, 3),
        "text": (f"worst case {detect + delay + fence + start:.0f} s: detect {detect:.1f} s + priority delay {delay:.0f} s "
                 f"+ fence up to {fence:.0f} s + start up to {start:.0f} s (budgets, not typical times)"),
    }


def _vm_list(rt: Runtime, facts: P.Facts, fails: dict[str, int]) -> list[dict[str, Any]]:
    w = rt.world
    out = []
    for v in facts.resources.vms:
        info = w.vms.get(v.name)
        img = w.images.get(v.name)
        out.append({"name": v.name, "state": info.state if info else "unknown", "libvirt_reason": info.reason if info else -1,
                    "running": V.vm_held(v), "stop_cause": v.stop_cause.value,
                    "save_image": None if img is None else img.to_json(), "fail_count": fails.get(v.name, 0)})
    return out


def _peer_node(rt: Runtime, facts: P.Facts) -> dict[str, Any]:
    view = rt.heartbeat.view()
    r = view.report
    node: dict[str, Any] = {"name": rt.peer, "self": False, "online": view.state in HEARD, "state": view.state.value,
                            "silent_for_seconds": _r(view.silent_for)}
    if r is None:
        return {**node, "phase": None, "epoch": None, "eligible": None, "drbd": None, "mounted": None, "ip": None, "vms": {},
                "gateway_score": None, "fail_counts": {}}
    rs = r.resources
    return {**node, "phase": r.phase, "epoch": None if r.epoch is None else f"{r.epoch.counter}@{r.epoch.node}",
            "eligible": r.eligible, "drbd": dataclasses.asdict(rs.drbd), "mounted": rs.mounted, "ip": rs.ip,
            "vms": {v.name: v.state for v in rs.vms}, "vms_omitted": rs.vms_omitted, "gateway_score": r.gateway_score,
            "fail_counts": {v.name: v.fail_count for v in rs.vms if v.fail_count}}


def _fencing(rt: Runtime, facts: P.Facts, now: float, wall: float) -> dict[str, Any]:
    mon = rt.monitor
    red = mon.assess()
    devices = []
    for li, lvl in enumerate(rt.levels, 1):
        for a in lvl:
            c = mon.results.get(a.name)
            devices.append({"level": li, "name": a.name, "kind": a.kind, "describe": a.describe(),
                            "checked_at": c.health.checked_at if c else None, "ok": c.health.ok if c else None,
                            "message": c.health.message if c else "not checked yet",
                            "power": c.health.power.value if c else None,
                            "identity": c.identity.trust.value if c else None, "usable": c.usable if c else False})
    att = facts.fencing.attempt
    coord = rt.coordinator
    st = coord.status() if coord is not None else None
    recs = rt.fence_records()
    return {
        "redundancy": {"grade": red.grade, "can_fence_now": red.can_fence_now, "text": red.text},
        "devices": devices,
        "attempt": None if att is None else {"episode": str(att.episode), "started_at": to_wall(att.started_at, now, wall),
                                             "running": att.running, "finished_at": None if att.finished_at is None else
                                             to_wall(att.finished_at, now, wall), "detail": att.detail},
        "failures": facts.fencing.failures,
        "peer_reported_off": facts.fencing.peer_reported_off,
        "operation": None if st is None else {"episode": st.episode.key(), "phase": st.phase.value, "requesters": st.requesters,
                                              "level": st.level, "device": st.device, "rounds": st.rounds,
                                              "outcome": st.report.outcome.value if st.report else None,
                                              "message": st.report.message if st.report else None},
        "records": [{"episode": r.episode.key(), "kind": r.kind, "devices": list(r.devices), "confirmed_at": r.confirmed,
                     "operator": r.operator, "accept_data_loss": r.accept_data_loss, "target_incarnation": r.target_incarnation}
                    for r in recs[-5:]],
        "reloading": rt.coordinator is None,
    }


def _intent(rt: Runtime, wall: float) -> dict[str, Any]:
    view = rt.heartbeat.view()
    rec = view.intent
    return {
        "version": rec.version, "origin": rec.origin, "changed_at": rec.changed_at or None, "summary": rec.describe(),
        "target_role": rec.target_role, "maintenance": rec.maintenance, "standby": list(rec.standby),
        "bans": [{"node": b.node, "until": b.until, "remaining_seconds": None if b.until is None else round(max(0.0, b.until - wall), 1),
                  "active": b.active(wall), "reason": b.reason} for b in rec.bans],
        "acknowledged_by_peer": view.intent_acknowledged, "unblock_seq": rec.unblock_seq, "fence_seq": rec.fence_seq,
        "superseded": dataclasses.asdict(view.intent_superseded) if view.intent_superseded else None,
    }


def _drbd(rt: Runtime, facts: P.Facts) -> dict[str, Any]:
    f = rt.world.drbd
    now = time.monotonic()
    return {
        "resource": f.resource, "backend": f.backend, "known": f.known, "error": f.error,
        "role": f.role.value, "peer_role": f.peer_role.value,
        "connection": f.connection_raw or (f.connection.value if f.connection else None),
        "disk": f.disk.value if f.disk else None, "peer_disk": f.peer_disk.value if f.peer_disk else None,
        "replication": f.replication.value if f.replication else None,
        "resync_percent": f.resync.done_percent if f.resync else None, "out_of_sync_kib": f.out_of_sync_kib,
        "suspended": sorted(f.suspended), "split_brain": f.split_brain, "split_brain_evidence": f.split_brain_evidence,
        "fence_peer_running": f.fence_peer_running, "current_uuid": f.current_uuid, "data_uuid": facts.drbd.data_uuid or None,
        "connected_for_seconds": _age(now, rt.world.connected_since) if f.connection is not None and f.connection.value == "Connected" else None,
        "config_safe": facts.drbd.config_safe,
        "config_issues": [i.describe() for i in f.settings.issues] if f.settings is not None else None,
    }


async def _usage(rt: Runtime) -> dict[str, Any] | None:
    if not rt.world.mounted:
        return None
    mp = rt.group.filesystem.mountpoint
    try:
        async with asyncio.timeout(USAGE_TIMEOUT):
            return await run_in(OBSERVE, disk_usage, mp)
    except (OSError, TimeoutError):
        return None


async def document(rt: Runtime) -> dict[str, Any]:
    """The whole status document (schema ``SCHEMA``)."""
    now, wall = time.monotonic(), time.time()
    facts = rt.facts_now()
    d = rt.loop.decision
    c = rt.cfg.cluster
    dur = rt.loop.state.durable
    fails = {vm: n for vm, n, _ in rt.failcounts.as_tuples()}
    active, why_active = active_node(rt, facts)
    own = {"name": rt.node, "self": True, "online": True, "state": "alive",
           "phase": d.phase.value if d else "STARTING", "epoch": str(dur.epoch), "eligible": not ineligible(rt, facts),
           "drbd": {"role": facts.drbd.role.value, "disk": facts.drbd.disk.value, "peer_disk": facts.drbd.peer_disk.value,
                    "connection": facts.drbd.connection.value},
           "mounted": facts.resources.mounted, "ip": facts.resources.ip,
           "vms": {v.name: (rt.world.vms.get(v.name).state if rt.world.vms.get(v.name) else "unknown")  # type: ignore[union-attr]
                   for v in facts.resources.vms},
           "gateway_score": facts.gateway.score, "fail_counts": {k: v for k, v in fails.items() if v}}
    gw = rt.pinger.facts()
    view = rt.heartbeat.view()
    return {
        "schema": SCHEMA,
        "generated_at": wall,
        "cluster": c.name, "node": c.node, "peer": c.peer,
        "phase": d.phase.value if d else "STARTING",
        "verdict": rt.loop.verdict,
        "decision": None if d is None else {
            "code": d.reason.code.value, "phase": d.phase.value, "sentence": d.reason.sentence, "since": rt.loop.decided_at,
            "message_id": message_id(d.reason.code.value), "meaning": TABLE[d.reason.code].meaning,
            "actions": [type(a).__name__ for a in d.actions if not isinstance(a, (P.Publish, P.WaitUntil))],
        },
        "active_node": active, "active_why": why_active,
        "epoch": {"this_node": str(dur.epoch), "peer_seen": str(dur.peer_epoch_seen), "behind": V.epoch_behind(dur)},
        "block": None if dur.block is None else {"cause": dur.block.cause.value, "detail": dur.block.detail},
        "loss_episode": None if dur.episode is None else str(dur.episode),
        "grants": {"out": str(dur.grant_out) if dur.grant_out else None, "acknowledged": str(dur.grant_ack) if dur.grant_ack else None,
                   "declined": dur.declined},
        "nodes": [own, _peer_node(rt, facts)],
        "not_active_because": ([] if V.holds(facts) else ineligible(rt, facts)),
        "drbd": _drbd(rt, facts),
        "filesystem": {"device": str(rt.cfg.filesystem.device), "mountpoint": str(rt.cfg.filesystem.mountpoint),
                       "fstype": rt.cfg.filesystem.fstype, "mounted": rt.world.mounted, "error": rt.world.mount_error,
                       "usage": await _usage(rt)},
        "ip": {"address": str(rt.cfg.ip.address), "interface": rt.cfg.ip.interface, "present": rt.world.ip, "error": rt.world.ip_error},
        "vms": _vm_list(rt, facts, fails),
        "libvirt": {"connected": rt.world.vms.connected, "error": rt.world.vms.error},
        "gateway": {"score": gw.score, "stable_score": gw.stable_score, "max_score": gw.max_score, "reachable": gw.reachable,
                    "observed_at": None if gw.observed_at is None else to_wall(gw.observed_at, now, wall),
                    "targets": [{"target": t.target, "address": t.address, "reachable": t.reachable, "rtt_ms": _r(t.rtt_ms),
                                 "error": t.error} for t in gw.targets],
                    "fresh": None if facts.gateway.fresh is None else {"taken_at": to_wall(facts.gateway.fresh.taken_at, now, wall),
                                                                       "reachable": facts.gateway.fresh.reachable}},
        "heartbeat": status_dict(rt.heartbeat),
        "fencing": _fencing(rt, facts, now, wall),
        "fence_peer": rt.fence_peer.status(),
        "intent": _intent(rt, wall),
        "settings": {"this_node": view.settings_fingerprint, "peer": view.peer_settings_fingerprint, "mismatch": view.settings_mismatch},
        "resources": rt.group.status(),
        "sequence": None if facts.sequence is None else {"kind": facts.sequence.kind.value, "gate": facts.sequence.gate,
                                                          "started_at": to_wall(facts.sequence.started_at, now, wall)},
        "last_result": None if facts.last_result is None else {
            "kind": facts.last_result.kind.value, "gate": facts.last_result.gate, "ok": facts.last_result.ok,
            "finished_at": to_wall(facts.last_result.finished_at, now, wall), "detail": facts.last_result.detail},
        "predicted_failover": predicted_failover(rt),
        "daemon": rt.daemon_status(),
    }


def why(rt: Runtime) -> dict[str, Any]:
    """The current decision, its reason code and the inputs that mattered (``clevervm why --json``)."""
    now, wall = time.monotonic(), time.time()
    facts = rt.facts_now()
    st = rt.loop.state
    d = rt.loop.decision
    dur = st.durable
    status = P.peer_status(facts, rt.settings)
    rep = facts.peer.report
    code = d.reason.code if d is not None else None
    groups: dict[str, dict[str, Any]] = {
        "peer": {"status": status.value, "heard_this_boot": dur.peer_heard_boot == facts.local.boot_id,
                 "links_silent_seconds": {ln.name: _r(ln.age) for ln in facts.peer.links},
                 "heartbeat_timeout_seconds": rt.settings.heartbeat_timeout,
                 "phase": rep.phase if rep else None, "holds": rep.holds if rep else None, "eligible": rep.eligible if rep else None,
                 "epoch": str(rep.epoch) if rep else None, "disk": rep.disk.value if rep else None,
                 "leaving": rep.leaving if rep else None, "incompatible": facts.peer.incompatible,
                 "unauthenticated": facts.peer.unauthenticated},
        "loss": {"episode": str(dur.episode) if dur.episode else None,
                 "lost_at": None if st.lost_at is None else to_wall(st.lost_at, now, wall),
                 "fence_not_before": None if st.fence_not_before is None else to_wall(st.fence_not_before, now, wall),
                 "observe_until": None if st.observe_until <= now else to_wall(st.observe_until, now, wall),
                 "silent_peer_grace_seconds": rt.settings.silent_peer_grace,
                 "priority_delay_seconds": rt.settings.priority_delay, "random_delay_seconds": rt.settings.random_delay,
                 "fresh_gateway_probe": None if facts.gateway.fresh is None else {
                     "taken_at": to_wall(facts.gateway.fresh.taken_at, now, wall), "reachable": facts.gateway.fresh.reachable},
                 "fence_record_for_episode": V.record_for(facts, dur.episode) is not None,
                 "fence_attempt_running": bool(facts.fencing.attempt and facts.fencing.attempt.running),
                 "fence_failures": facts.fencing.failures, "peer_reported_off": facts.fencing.peer_reported_off},
        "drbd": {"role": facts.drbd.role.value, "peer_role": facts.drbd.peer_role.value, "connection": facts.drbd.connection.value,
                 "disk": facts.drbd.disk.value, "peer_disk": facts.drbd.peer_disk.value, "split_brain": facts.drbd.split_brain,
                 "suspended": facts.drbd.suspended.value, "fence_peer_pending": facts.drbd.fence_peer_pending,
                 "config_safe": facts.drbd.config_safe, "config_problem": facts.drbd.config_problem or None,
                 "data_uuid": facts.drbd.data_uuid or None},
        "placement": {"this_node_eligible": not ineligible(rt, facts), "this_node_ineligible_because": ineligible(rt, facts),
                      "gateway_score_here": facts.gateway.score, "gateway_score_peer": rep.gateway_score if rep else None,
                      "preferred_node": rt.settings.preferred_node, "stickiness": rt.settings.stickiness,
                      "grant_out": str(dur.grant_out) if dur.grant_out else None,
                      "grant_acknowledged": str(dur.grant_ack) if dur.grant_ack else None,
                      "grant_offered_by_peer": str(rep.grant) if rep and rep.grant else None,
                      "bans": [{"node": b.node, "remaining_seconds": None if b.until is None else _r(b.until - now)}
                               for b in facts.intent.bans],
                      "standby": sorted(facts.intent.standby), "shutting_down": facts.local.shutting_down,
                      "epoch": str(dur.epoch), "peer_epoch_seen": str(dur.peer_epoch_seen)},
        "resources": {"held": _held_list(facts), "target_role": facts.intent.target_role.value,
                      "maintenance": facts.intent.maintenance,
                      "vms": {v.name: {"state": v.state.value, "stop_cause": v.stop_cause.value,
                                       "fail_count": V.effective_fail_count(facts, rt.settings, v.name)} for v in facts.resources.vms},
                      "migration_threshold": rt.settings.migration_threshold,
                      "sequence": None if facts.sequence is None else f"{facts.sequence.kind.value} under {facts.sequence.gate}",
                      "last_result": None if facts.last_result is None else {"kind": facts.last_result.kind.value, "ok": facts.last_result.ok,
                                                                             "detail": facts.last_result.detail}},
        "block": {"block": None if dur.block is None else {"cause": dur.block.cause.value, "detail": dur.block.detail},
                  "unblock_seq": facts.intent.unblock_seq, "unblock_seen": dur.unblock_seen},
    }
    mattered = ["peer"]
    if code in LOSS:
        mattered += ["loss", "drbd"]
    if code in PLACEMENT:
        mattered += ["placement", "drbd"]
    if code in DRBD_FENCING:
        mattered += ["drbd", "loss"]
    if code in BLOCKS:
        mattered += ["block", "drbd", "placement"]
    if code in RESOURCES:
        mattered += ["resources"]
    mattered = list(dict.fromkeys(mattered))
    active, why_active = active_node(rt, facts)
    not_active = [] if V.holds(facts) else ineligible(rt, facts)
    if not V.holds(facts) and rep is not None and status is P.PeerStatus.HEARD and (rep.holds or rep.phase in V.ACTIVE_PHASES):
        not_active.insert(0, f"{rt.peer} is active (phase {rep.phase}) and stickiness keeps the resources where they run")
    return {
        "schema": SCHEMA, "node": rt.node, "generated_at": wall,
        "decision": None if d is None else {"code": d.reason.code.value, "phase": d.phase.value, "sentence": d.reason.sentence,
                                            "since": rt.loop.decided_at, "meaning": TABLE[d.reason.code].meaning,
                                            "message_id": message_id(d.reason.code.value)},
        "waiting_for": [] if rt.deciding else rt.world.observed(),
        "active_node": active, "active_why": why_active,
        "not_active_because": not_active,
        "mattered": mattered,
        "inputs": groups,
    }


def vm_running(state: str) -> bool:
    return vm_state(state) in (P.VmState.RUNNING, P.VmState.PAUSED)
