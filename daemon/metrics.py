"""Prometheus metrics (``docs/metrics.md``): what the status document says, plus what only events can tell.

Two kinds of metric live here:

- :func:`families` turns one status document (``status.document``, the same
  dict ``clevervm status --json`` prints) into metric families. It is pure:
  every gauge and every counter the daemon already keeps (decision counts,
  heartbeat drops, loop cycles) is read from that document, never
  recomputed, so a scrape can never disagree with ``clevervm status``.
- :class:`Instruments` holds what a document cannot rebuild because it keeps
  no past: fence attempts by result and their duration, failover and
  handover phase durations (histograms fed by ``history.History`` when a
  timeline closes) and the loop lag per timer wake-up. The executor, the
  history and the loop feed them; prometheus-client's metric objects are
  thread-safe, so the HTTP thread reads them while the loop writes.

Invariants:
- Every metric name starts with ``clever_``; seconds, bytes and ratios are
  the units (names end in ``_seconds``/``_bytes``/``_ratio``/``_total``).
- A value the document does not know (null) is left out, never exported as 0.
- State sets (phase, DRBD states, VM state, fence redundancy) always export
  every known state, 1 for the current one and 0 for the others, so a rule
  can test for a state that is absent right now.
- Label sets of the instruments are created up front (every fence result,
  the phases the history knows) so ``increase()`` sees the first event.
- Importing this module turns off prometheus-client's ``*_created`` series
  (a process-wide switch of the library; the daemon exports nothing else).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, disable_created_metrics
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily, Metric, StateSetMetricFamily

from clever_cluster import policy as P
from clever_cluster.fencing.types import Outcome
from clever_cluster.policy.reasons import Code

from .drbd.model import ConnState, DiskState, ReplState, Role
from .heartbeat.facts import PeerState
from .heartbeat.wire import Drop
from .history import Timeline
from .resources.vmmonitor import STATE_NAMES

PHASES = tuple(p.value for p in P.Phase)
DRBD_ROLES = tuple(r.value for r in Role)
DRBD_CONNECTIONS = tuple(c.value for c in ConnState)
DRBD_DISKS = tuple(d.value for d in DiskState)
DRBD_REPLICATION = tuple(r.value for r in ReplState)
VM_STATES = (*STATE_NAMES.values(), "missing", "unknown")
PEER_STATES = tuple(s.value for s in PeerState)
REDUNDANCY = ("ok", "degraded", "none")
FENCE_RESULTS = (*(o.value for o in Outcome), "internal_error")
FAILOVER_PHASES = ("fence_started", "fence_confirmed", "promote_started", "active", "total")
HANDOVER_PHASES = {"out": ("granted", "peer_active", "total"), "in": ("promote_started", "active", "total")}
HANDOVER_KINDS = {"handover_out": "out", "handover_in": "in"}
SUCCESS = {"failover": ("active here",), "handover_out": ("handed over",), "handover_in": ("active here",)}

FENCE_BUCKETS = (0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0)
PHASE_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0)
LAG_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)

# No `*_created` series next to each counter and histogram: in the text format Prometheus stores them
# as extra gauges that nobody queries (the process start time is clever_daemon_start_time_seconds).
disable_created_metrics()  # type: ignore[no-untyped-call]


class Instruments:
    """The event-fed counters and histograms, in ``registry``."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.fence_attempts = Counter("clever_fence_attempts", "Fence operations run by this node, by result.", ["result"],
                                      registry=registry)
        self.fence_duration = Histogram("clever_fence_duration_seconds", "Duration of one fence operation, by result.", ["result"],
                                        buckets=FENCE_BUCKETS, registry=registry)
        self.failover_phase = Histogram(
            "clever_failover_phase_seconds", "Failover on this node (the survivor): seconds of each phase, named by the mark that "
            "ends it (from the previous mark), each resource step as ACTION:STEP, and total for a failover that ended active here.",
            ["phase"], buckets=PHASE_BUCKETS, registry=registry)
        self.handover_phase = Histogram(
            "clever_handover_phase_seconds", "Planned handover: seconds of each phase on the giving (side=out) or taking (side=in) "
            "node, named like clever_failover_phase_seconds; total for a handover that completed.",
            ["side", "phase"], buckets=PHASE_BUCKETS, registry=registry)
        self.loop_lag = Histogram("clever_loop_lag_seconds", "Lateness of the decision loop's timer wake-ups.", buckets=LAG_BUCKETS,
                                  registry=registry)
        for r in FENCE_RESULTS:
            self.fence_attempts.labels(r)
            self.fence_duration.labels(r)
        for ph in FAILOVER_PHASES:
            self.failover_phase.labels(ph)
        for side, phases in HANDOVER_PHASES.items():
            for ph in phases:
                self.handover_phase.labels(side, ph)

    def fence_attempt(self, result: str, seconds: float) -> None:
        self.fence_attempts.labels(result).inc()
        self.fence_duration.labels(result).observe(max(0.0, seconds))

    def lag(self, seconds: float) -> None:
        self.loop_lag.observe(max(0.0, seconds))

    def timeline_closed(self, t: Timeline) -> None:
        """Observe the phases of a closed failover or handover timeline (others are not counted)."""
        labels: tuple[str, ...]
        if t.kind == "failover":
            hist, labels = self.failover_phase, ()
        elif t.kind in HANDOVER_KINDS:
            hist, labels = self.handover_phase, (HANDOVER_KINDS[t.kind],)
        else:
            return
        for phase, seconds in timeline_phases(t):
            hist.labels(*labels, phase).observe(seconds)


def timeline_phases(t: Timeline) -> list[tuple[str, float]]:
    """(phase, seconds) of a closed timeline: mark to mark, each resource step, and the total when it succeeded."""
    out = [(b.name, max(0.0, b.mono - a.mono)) for a, b in zip(t.marks, t.marks[1:], strict=False)]
    for rec in t.runs:
        out += sorted(rec.phase_seconds().items())
    if t.marks and t.outcome in SUCCESS.get(t.kind, ()):
        out.append(("total", max(0.0, t.marks[-1].mono - t.marks[0].mono)))
    return out


# ---------------------------------------------------------------------- the status document as metric families


def _g(name: str, doc: str, value: float | bool | None, labels: Mapping[str, str] | None = None) -> Iterator[Metric]:
    if value is None:
        return
    labels = labels or {}
    fam = GaugeMetricFamily(name, doc, labels=list(labels))
    fam.add_metric(list(labels.values()), float(value))
    yield fam


def _states(name: str, doc: str, states: Iterable[str], current: str | None, labels: Mapping[str, str] | None = None) -> Metric:
    labels = labels or {}
    known = list(dict.fromkeys(states))
    if current is not None and current not in known:
        known.append(current)  # a state this version does not list (a newer DRBD): still shown
    fam = StateSetMetricFamily(name, doc, labels=list(labels))
    fam.add_metric(list(labels.values()), {s: s == current for s in known})
    return fam


def families(doc: Mapping[str, Any], age: float = 0.0) -> Iterator[Metric]:
    """Metric families of one status document; ``age`` is how old the document is (0: built for this scrape)."""
    yield from _g("clever_status_age_seconds", "Age of the status document this scrape reports (above 0 when the loop did not "
                  "answer in time and the previous document was served).", age)
    yield from _daemon(doc)
    yield from _decision(doc)
    yield from _peer(doc)
    yield from _gateway(doc)
    yield from _drbd(doc)
    yield from _resources(doc)
    yield from _fencing(doc)


def _daemon(doc: Mapping[str, Any]) -> Iterator[Metric]:
    d = doc["daemon"]
    info = InfoMetricFamily("clever_build", "The daemon's version.")
    info.add_metric([], {"version": str(d["version"])})
    yield info
    node = InfoMetricFamily("clever_node", "This node, its peer and its cluster.")
    node.add_metric([], {"node": str(doc["node"]), "peer": str(doc["peer"]), "cluster": str(doc["cluster"])})
    yield node
    yield from _g("clever_daemon_start_time_seconds", "When the daemon started (seconds since the epoch).", d["started_at"])
    lp = d["loop"]
    yield from _g("clever_loop_lag_max_seconds", "Largest timer lateness of the decision loop since the daemon started.", lp["max_lag_seconds"])
    yield from _g("clever_loop_last_cycle_seconds", "Duration of the last decision cycle.", lp["last_cycle_seconds"])
    for key, name, what in (("cycles", "clever_loop_cycles", "Decision cycles run."),
                            ("stalls", "clever_loop_stalls", "Stalls of the event loop detected (then re-observe before acting)."),
                            ("errors", "clever_loop_errors", "Decision cycles that failed (logged; nothing carried out).")):
        yield CounterMetricFamily(name, what, value=float(lp[key]))
    fam = CounterMetricFamily("clever_reloads", "Configuration reloads, by result.", labels=["result"])
    for result in ("ok", "failed"):
        fam.add_metric([result], float(d["reloads"][result]))
    yield fam
    wd = d["watchdog"]
    if wd is not None:
        yield from _g("clever_watchdog_armed", "1 when the hardware watchdog is armed.", wd["armed"])


def _decision(doc: Mapping[str, Any]) -> Iterator[Metric]:
    yield _states("clever_phase", "The decision's phase on this node.", PHASES, doc["phase"])
    dec = doc["decision"]
    if dec is not None:
        info = InfoMetricFamily("clever_decision", "The current decision's reason code (docs/reasons.md).")
        info.add_metric([], {"reason": dec["code"]})
        yield info
        yield from _g("clever_decision_since_timestamp_seconds", "When the current reason code was first decided.", dec["since"])
    counts = doc.get("decision_counts") or {}
    fam = CounterMetricFamily("clever_decisions", "Changes of the decision to each reason code.", labels=["reason"])
    for code in sorted({c.value for c in Code} | set(counts)):
        fam.add_metric([code], float(counts.get(code, 0)))
    yield fam
    yield from _g("clever_blocked", "1 while this node is BLOCKED (cleared only by clevervm unblock).", doc["block"] is not None)
    intent = doc["intent"]
    yield from _g("clever_maintenance", "1 while maintenance mode is on (observe only).", intent["maintenance"])
    yield from _g("clever_intent_acknowledged", "1 when the peer acknowledged the current admin intent.", intent["acknowledged_by_peer"])
    yield from _g("clever_settings_mismatch", "1 when the peer's safety settings differ from this node's.", doc["settings"]["mismatch"])
    yield from _g("clever_predicted_failover_worst_seconds", "Worst-case unplanned failover time from the configured budgets.",
                  doc["predicted_failover"]["worst_case_seconds"])


def _peer(doc: Mapping[str, Any]) -> Iterator[Metric]:
    peer = doc["nodes"][1]
    hb = doc["heartbeat"]
    yield from _g("clever_peer_alive", "1 when the peer's heartbeats are heard (alive or incompatible).", peer["online"])
    yield _states("clever_peer_state", "The peer as the heartbeat sees it.", PEER_STATES, peer["state"])
    yield from _g("clever_peer_silence_seconds", "Seconds since the peer was last heard.", hb["silent_for"])
    yield CounterMetricFamily("clever_peer_restarts", "Restarts of the peer's daemon seen (new incarnations).", value=float(hb["restarts"]))
    links = hb["links"]
    up = GaugeMetricFamily("clever_link_up", "1 when the peer is heard on this heartbeat link.", labels=["link"])
    loss = GaugeMetricFamily("clever_link_loss_ratio", "Heartbeat loss on the link: direction=in of the peer's datagrams as counted "
                             "here, out of ours as the peer counts them.", labels=["link", "direction"])
    rtt = GaugeMetricFamily("clever_link_rtt_seconds", "Last heartbeat round-trip time on the link.", labels=["link"])
    srtt = GaugeMetricFamily("clever_link_rtt_smoothed_seconds", "Smoothed heartbeat round-trip time on the link.", labels=["link"])
    sent = CounterMetricFamily("clever_link_sent_datagrams", "Heartbeat datagrams sent on the link.", labels=["link"])
    errs = CounterMetricFamily("clever_link_send_errors", "Heartbeat datagrams the link failed to send.", labels=["link"])
    for ln in links:
        name = str(ln["name"])
        up.add_metric([name], float(bool(ln["up"])))
        for direction in ("in", "out"):
            if ln[f"loss_{direction}"] is not None:
                loss.add_metric([name, direction], float(ln[f"loss_{direction}"]))
        if ln["rtt_ms"] is not None:
            rtt.add_metric([name], float(ln["rtt_ms"]) / 1000.0)
        if ln["rtt_smoothed_ms"] is not None:
            srtt.add_metric([name], float(ln["rtt_smoothed_ms"]) / 1000.0)
        sent.add_metric([name], float(ln["sent"]))
        errs.add_metric([name], float(ln["send_errors"]))
    yield from (up, loss, rtt, srtt, sent, errs)
    drops = CounterMetricFamily("clever_heartbeat_drops", "Heartbeat datagrams dropped, by reason (forged, garbled, replayed...).",
                                labels=["reason"])
    counts = hb["drops"]
    for reason in sorted({d.value for d in Drop} | set(counts)):
        drops.add_metric([reason], float(counts.get(reason, 0)))
    yield drops


def _gateway(doc: Mapping[str, Any]) -> Iterator[Metric]:
    gw = doc["gateway"]
    yield from _g("clever_gateway_score", "Gateway targets reachable now times gateway.multiplier.", gw["score"])
    yield from _g("clever_gateway_stable_score", "Gateway score after dampening (what placement uses).", gw["stable_score"])
    yield from _g("clever_gateway_max_score", "Highest possible gateway score (every target reachable).", gw["max_score"])
    reach = GaugeMetricFamily("clever_gateway_target_reachable", "1 when the gateway target answers.", labels=["target", "address"])
    rtt = GaugeMetricFamily("clever_gateway_target_rtt_seconds", "Round-trip time to the gateway target.", labels=["target", "address"])
    for t in gw["targets"]:
        lbl = [str(t["target"]), str(t["address"] or "")]
        if t["reachable"] is not None:
            reach.add_metric(lbl, float(bool(t["reachable"])))
        if t["rtt_ms"] is not None:
            rtt.add_metric(lbl, float(t["rtt_ms"]) / 1000.0)
    yield from (reach, rtt)


def _drbd(doc: Mapping[str, Any]) -> Iterator[Metric]:
    d = doc["drbd"]
    lbl = {"resource": str(d["resource"])}
    yield from _g("clever_drbd_known", "1 when DRBD's state could be read.", d["known"], lbl)
    yield _states("clever_drbd_role", "DRBD role of this node.", DRBD_ROLES, d["role"], lbl)
    yield _states("clever_drbd_peer_role", "DRBD role of the peer, as DRBD here sees it.", DRBD_ROLES, d["peer_role"], lbl)
    yield _states("clever_drbd_connection_state", "DRBD connection state.", DRBD_CONNECTIONS, d["connection"], lbl)
    yield _states("clever_drbd_disk_state", "DRBD disk state of this node.", DRBD_DISKS, d["disk"], lbl)
    yield _states("clever_drbd_peer_disk_state", "DRBD disk state of the peer, as DRBD here sees it.", DRBD_DISKS, d["peer_disk"], lbl)
    yield _states("clever_drbd_replication_state", "DRBD replication state.", DRBD_REPLICATION, d["replication"], lbl)
    oos = d["out_of_sync_kib"]
    yield from _g("clever_drbd_out_of_sync_bytes", "Data not yet in sync with the peer.", None if oos is None else oos * 1024.0, lbl)
    done = d["resync_percent"]
    yield from _g("clever_drbd_resync_done_ratio", "Progress of a running resync (absent when none runs).",
                  None if done is None else done / 100.0, lbl)
    yield from _g("clever_drbd_split_brain", "1 when DRBD reports a split brain.", d["split_brain"], lbl)
    yield from _g("clever_drbd_suspended", "1 when DRBD I/O is suspended (frozen).", bool(d["suspended"]), lbl)
    yield from _g("clever_drbd_config_safe", "1 when the DRBD settings are safe (DESIGN section 9), 0 when unsafe.", d["config_safe"], lbl)


def _resources(doc: Mapping[str, Any]) -> Iterator[Metric]:
    fs = doc["filesystem"]
    yield from _g("clever_filesystem_mounted", "1 when the replicated filesystem is mounted here.", fs["mounted"],
                  {"mountpoint": str(fs["mountpoint"])})
    usage = fs["usage"] or {}
    for key, what in (("size_bytes", "Size"), ("used_bytes", "Used space"), ("free_bytes", "Free space (for unprivileged users)")):
        yield from _g(f"clever_filesystem_{key}", f"{what} of the replicated filesystem (absent when not mounted).", usage.get(key),
                      {"mountpoint": str(fs["mountpoint"])})
    yield from _g("clever_ip_present", "1 when the floating address is on this node.", doc["ip"]["present"], {"address": str(doc["ip"]["address"])})
    vms = doc["vms"]
    state = StateSetMetricFamily("clever_vm_state", "libvirt state of each managed VM on this node.", labels=["domain"])
    fails = GaugeMetricFamily("clever_vm_fail_count", "Start failures and crashes of the VM counted on this node (cleared by "
                              "clevervm cleanup or expiry).", labels=["domain"])
    image = GaugeMetricFamily("clever_vm_save_image", "1 when a managed-save image of the VM exists.", labels=["domain"])
    for v in vms:
        name = str(v["name"])
        known = list(VM_STATES) + ([] if v["state"] in VM_STATES else [v["state"]])
        state.add_metric([name], {s: s == v["state"] for s in known})
        fails.add_metric([name], float(v["fail_count"]))
        image.add_metric([name], float(v["save_image"] is not None))
    yield from (state, fails, image)


def _fencing(doc: Mapping[str, Any]) -> Iterator[Metric]:
    f = doc["fencing"]
    red = f["redundancy"]
    yield _states("clever_fence_redundancy", "Fence redundancy: ok (two usable levels), degraded (one), none.", REDUNDANCY, red["grade"])
    yield from _g("clever_fence_possible", "1 when a fence device is usable now.", red["can_fence_now"])
    yield from _g("clever_fence_episode_failures", "Failed fence rounds in the current loss episode.", f["failures"])
    healthy = GaugeMetricFamily("clever_fence_device_healthy", "1 when the fence device's last check succeeded, 0 when it failed "
                                "(absent before its first check).", labels=["device", "level", "kind"])
    usable = GaugeMetricFamily("clever_fence_device_usable", "1 when the fence device is usable (healthy and its identity trusted).",
                               labels=["device", "level", "kind"])
    for dev in f["devices"]:
        lbl = [str(dev["name"]), str(dev["level"]), str(dev["kind"])]
        if dev["ok"] is not None:
            healthy.add_metric(lbl, float(bool(dev["ok"])))
        usable.add_metric(lbl, float(bool(dev["usable"])))
    yield from (healthy, usable)
