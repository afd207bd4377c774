"""Plain-text renderings of the daemon's answers for `clevervm` (the JSON is the contract).

Each function takes the daemon's JSON (docs/status-schema.md) and returns
lines for a terminal. They never raise on a missing part: it shows as "-".
"""

from __future__ import annotations

import time
from typing import Any


def _fmt_duration(seconds: float) -> str:
    s = int(seconds)
    d, s = divmod(s, 86400)
    h, s = divmod(s, 3600)
    m, s = divmod(s, 60)
    if d:
        return f"{d}d {h}h {m}m"
    if h:
        return f"{h}h {m}m {s}s"
    if m:
        return f"{m}m {s}s"
    return f"{seconds:.1f}s"


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x * 100:.1f}%"


def _size(n: int | None) -> str:
    if n is None:
        return "-"
    x = float(n)
    for unit in ("B", "K", "M", "G", "T"):
        if x < 1024 or unit == "T":
            return f"{x:.0f}{unit}" if unit in ("B", "K") else f"{x:.1f}{unit}"
        x /= 1024
    return f"{x:.1f}T"


def _ts(t: float | None) -> str:
    return "-" if t is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))


def render_status(st: dict[str, Any]) -> str:
    d = st.get("decision") or {}
    lines = [
        f"Cluster {st['cluster']}   last updated {_ts(st.get('generated_at'))}",
        f"Node {st['node']}: phase {st['phase']}   (peer {st['peer']})",
        f"  {st['verdict']}",
        f"Active node: {st.get('active_node') or 'none'} ({st.get('active_why', '')})",
    ]
    if d:
        lines.append(f"Decision: {d['code']} since {_ts(d.get('since'))}")
    if st.get("not_active_because"):
        lines.append("Not active here because: " + "; ".join(st["not_active_because"]))
    for n in st.get("nodes", []):
        lines += _node(n)
    drbd = st.get("drbd") or {}
    fs = st.get("filesystem") or {}
    usage = fs.get("usage") or {}
    lines.append(f"DRBD storage: {drbd.get('resource')} {drbd.get('connection') or '-'} {drbd.get('role')}/{drbd.get('peer_role')} "
                 f"{drbd.get('disk') or '-'}/{drbd.get('peer_disk') or '-'}"
                 + (f" resync {drbd['resync_percent']:.1f}%" if drbd.get("resync_percent") is not None else "")
                 + (f" out-of-sync {drbd['out_of_sync_kib']} KiB" if drbd.get("out_of_sync_kib") else "")
                 + (" SUSPENDED(" + ",".join(drbd["suspended"]) + ")" if drbd.get("suspended") else "")
                 + (" SPLIT BRAIN" if drbd.get("split_brain") else ""))
    if drbd.get("config_safe") is False:
        lines.append("  UNSAFE DRBD SETTINGS: " + "; ".join(drbd.get("config_issues") or []))
    lines.append(f"  {fs.get('mountpoint')} {fs.get('fstype')} " + ("mounted here" if fs.get("mounted") else "not mounted here")
                 + (f" {_size(usage.get('size_bytes'))} {_size(usage.get('used_bytes'))} {_size(usage.get('free_bytes'))} "
                    f"{usage.get('percent')}%" if usage else ""))
    ip = st.get("ip") or {}
    lines.append(f"Floating IP {ip.get('address')} on {ip.get('interface')}: {'here' if ip.get('present') else 'not here'}")
    lines.append("Virtual machines:")
    for v in st.get("vms", []):
        img = v.get("save_image")
        lines.append(f"  Name: {v['name']} State: {v['state']} Managed save: {'yes (' + img['origin'] + ')' if img else 'no'}"
                     + (f" Fail count: {v['fail_count']}" if v.get("fail_count") else ""))
    gw = st.get("gateway") or {}
    lines.append(f"Gateway score: {gw.get('stable_score')} of {gw.get('max_score')} (now {gw.get('score')})")
    if st.get("heartbeat"):
        lines += render_heartbeat(st["heartbeat"])
    fe = st.get("fencing") or {}
    red = fe.get("redundancy") or {}
    lines.append(f"Fencing redundancy: {red.get('text', '-')}")
    for dev in fe.get("devices", []):
        lines.append(f"  level {dev['level']} {dev['name']}: {'ok' if dev.get('usable') else 'NOT USABLE'} ({dev.get('message')}; "
                     f"identity {dev.get('identity')})")
    if fe.get("attempt"):
        a = fe["attempt"]
        lines.append(f"  fence attempt: {'running' if a['running'] else 'ended'} {a.get('detail') or ''}".rstrip())
    intent = st.get("intent") or {}
    for b in intent.get("bans", []):
        left = "until unmigrate" if b.get("remaining_seconds") is None else f"{_fmt_duration(b['remaining_seconds'])} left"
        lines.append(f"Ban: {b['node']} ({left})")
    if intent.get("standby"):
        lines.append("Standby: " + ", ".join(intent["standby"]))
    if intent.get("maintenance"):
        lines.append("MAINTENANCE MODE: the cluster only observes")
    ep = st.get("epoch") or {}
    lines.append(f"Epoch: {ep.get('this_node')} (peer's last seen {ep.get('peer_seen')})")
    if st.get("block"):
        lines.append(f"BLOCKED: {st['block']['detail']} (clevervm unblock once resolved)")
    pf = st.get("predicted_failover") or {}
    if pf:
        lines.append(f"Predicted failover: {pf.get('text')}")
    dm = st.get("daemon") or {}
    if dm:
        lines.append(f"Daemon: pid {dm['pid']}, version {dm['version']}, up {_fmt_duration(dm['uptime_seconds'])}, "
                     f"loop lag {dm['loop']['lag_seconds'] * 1000:.1f} ms")
        lines.append(f"Config: {dm['config_path']} (settings fingerprint {dm['settings_fingerprint']})")
        if dm.get("waiting_for"):
            lines.append("Waiting for the first observation of: " + ", ".join(dm["waiting_for"]))
    return "\n".join(lines)


def _node(n: dict[str, Any]) -> list[str]:
    state = "online" if n.get("online") else f"OFFLINE ({n.get('state')})"
    drbd = n.get("drbd") or {}
    role = drbd.get("role") or "-"
    head = f"Node {n['name']}: {state}  phase {n.get('phase') or '-'}  epoch {n.get('epoch') or '-'}"
    res = [f"res_drbd {role}", "res_Filesystem " + ("Started" if n.get("mounted") else "Stopped"),
           "res_IPaddr " + ("Started" if n.get("ip") else "Stopped")]
    res += [f"{name} {state_}" for name, state_ in sorted((n.get("vms") or {}).items())]
    out = [head, "  " + "  ".join(res)]
    if n.get("fail_counts"):
        out.append("  fail counts: " + ", ".join(f"{k}={v}" for k, v in n["fail_counts"].items()))
    return out


def _peer_state(hb: dict[str, Any]) -> str:
    state = hb["state"]
    silent = hb.get("silent_for")
    if state == "unseen":
        return "not heard yet"
    if state == "lost":
        return f"LOST (nothing valid on any link for {silent:.1f}s)" if silent is not None else "LOST"
    if state == "left":
        return "left (announced a clean stop)"
    if state == "restarting":
        left = hb.get("restart_expected_in")
        return "restarting" + (f" (expected back within {max(0.0, left):.0f}s)" if left is not None else "")
    if state == "incompatible":
        p = hb["protocol"]
        return (f"INCOMPATIBLE (alive; it sends protocol {p['peer_sends'] or '?'} and reads up to {p['peer_reads_up_to']}, "
                f"this node reads {p['this_node_reads'][0]}..{p['this_node_reads'][1]})")
    return str(state)


def render_heartbeat(hb: dict[str, Any]) -> list[str]:
    """The peer, its links, the admin intent and what was dropped, for ``clevervm status``."""
    keys, proto = hb["keys"], hb["protocol"]
    head = f"Peer {hb['name']}: {_peer_state(hb)}"
    if hb.get("incarnation") is not None:
        head += f"   incarnation {hb['incarnation']}"
    if proto.get("peer_sends") is not None:
        head += f", protocol {proto['peer_sends']}"
    if keys.get("peer_uses"):
        head += f", key {keys['peer_uses']} ({keys['peer_uses_id']})"
    lines = [head]
    width = max(len(ln["name"]) for ln in hb["links"])
    for i, ln in enumerate(hb["links"]):
        name = ln["name"].ljust(width)
        if not ln["bound"]:
            lines.append(f"  link {name}  NOT BOUND: {ln['bind_error']}")
            continue
        state = "up  " if ln["up"] else "DOWN"
        heard = "nothing heard" if ln["silent_for"] is None else f"{state} heard {ln['silent_for']:.2f}s ago"
        rtt = "-" if ln["rtt_smoothed_ms"] is None else f"{ln['rtt_smoothed_ms']:.2f} ms"
        extra = f", {ln['send_errors']} send errors" if ln["send_errors"] else ""
        lines.append(f"  link {name}  {heard}, loss in {_pct(ln['loss_in'])} out {_pct(ln['loss_out'])}, rtt {rtt}{extra}")
        if ln["peer_link"] is not None and ln["peer_link"] != i:
            lines.append(f"    this link carries {hb['name']}'s link #{ln['peer_link'] + 1}: list [[heartbeat.link]] in the same order on both nodes")
    settings = hb["settings"]
    if settings["mismatch"]:
        lines.append(f"  SETTINGS DIFFER: this node {settings['this_node']}, {hb['name']} {settings['peer']}"
                     " (compare the [heartbeat], [fencing], [policy] and resource settings of both nodes)")
    intent = hb["intent"]
    rec = intent["record"]
    ack = f"acknowledged by {hb['name']}" if intent["acknowledged"] else "not yet acknowledged by the peer"
    origin = f" by {rec['origin']}" if rec["origin"] else ""
    lines.append(f"Intent: version {rec['version']}{origin} ({intent['summary']}): {ack}")
    if intent.get("superseded"):
        lost = intent["superseded"]
        lines.append(f"  this node's change (version {lost['version']}) was replaced before the peer acknowledged it; check the record")
    if keys.get("next_key_file"):
        lines.append(f"Keys: sending with key_file ({keys['key_file']}), also accepting next_key_file ({keys['next_key_file']})")
    if hb["drops"]:
        lines.append("Dropped datagrams: " + ", ".join(f"{k} {v}" for k, v in sorted(hb["drops"].items())))
    return lines


def render_why(w: dict[str, Any]) -> str:
    d = w.get("decision")
    if d is None:
        return "No decision yet: waiting for the first observation of " + ", ".join(w.get("waiting_for") or ["the parts"])
    lines = [f"{d['phase']}: {d['sentence']}", f"reason {d['code']} (since {_ts(d.get('since'))}): {d['meaning']}",
             f"active node: {w.get('active_node') or 'none'} ({w.get('active_why')})"]
    if w.get("not_active_because"):
        lines.append("not active here because:")
        lines += [f"  - {x}" for x in w["not_active_because"]]
    lines.append("inputs that mattered:")
    for group in w.get("mattered", []):
        lines.append(f"  {group}:")
        for k, v in (w["inputs"].get(group) or {}).items():
            lines.append(f"    {k}: {v}")
    return "\n".join(lines)


def render_history(h: dict[str, Any]) -> str:
    lines = ["Recent decisions:"]
    for d in h.get("decisions", []):
        lines.append(f"  {_ts(d['wall'])} {d['phase']:<11} {d['code']}: {d['sentence']}")
    for t in h.get("timelines", []):
        lines += render_timeline(t)
    return "\n".join(lines)


def render_timeline(t: dict[str, Any]) -> list[str]:
    """One failover/handover timeline of ``clevervm history``: its phases and the resource sequences' steps."""
    lines = [f"Timeline {t['kind']} started {_ts(t['started_at'])}: {t['outcome']}"
             + (f", {t['total_seconds']:.2f} s" if t.get("total_seconds") is not None else "")]
    for p in t["phases"]:
        lines.append(f"  {p['from']} -> {p['to']}: {p['seconds']:.3f} s")
    for s in t["sequences"]:
        steps = ", ".join(f"{x['action']} {x['step']} {x['seconds']:.2f}s" for x in s["steps"])
        lines.append(f"  {s['kind']} sequence {s['outcome']}: {steps}")
    return lines


def render_check(c: dict[str, Any]) -> str:
    marks = {"ok": "ok  ", "warn": "WARN", "fail": "FAIL"}
    lines = [f"[{marks.get(ln['severity'], ln['severity'])}] {ln['area']}: {ln['text']}" for ln in c.get("lines", [])]
    pf = c.get("predicted_failover") or {}
    if pf:
        lines.append(f"predicted failover: {pf.get('text')}")
    lines.append("check passed" if c.get("ok") else "check FAILED: fix the FAIL lines")
    return "\n".join(lines)


def render_split_brain(s: dict[str, Any]) -> str:
    here, there = s["this_node"], s["peer"]
    lines = [("SPLIT BRAIN reported" if s.get("split_brain") else "no split brain reported by DRBD"),
             f"  {here['node']} (here): role {here['role']} disk {here['disk']} epoch {here['epoch']} generation {here['generation']}",
             f"  {there['node']}: {there['heard']}, role {there['role']} disk {there['disk']} epoch {there['epoch']} data {there['data_uuid']}",
             f"newer data: {s.get('newer_data') or 'unknown'} ({s.get('why')})", "recovery:"]
    lines += [f"  {x}" for x in s.get("recovery", [])]
    if s.get("ran"):
        lines.append("ran: " + "; ".join(s["ran"]))
    if s.get("next"):
        lines.append(s["next"])
    return "\n".join(lines)

