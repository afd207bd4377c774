"""Plain-text renderings of the daemon's answers for `clevervm` (the JSON is the contract).

Each function takes the daemon's JSON (docs/status-schema.md) and returns
lines for a terminal. They never raise on a missing part: it shows as "-".
"""

from __future__ import annotations

import time
from collections.abc import Callable
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


def _pct(x: Any) -> str:
    return f"{x * 100:.1f}%" if isinstance(x, (int, float)) else "-"


def _size(n: Any) -> str:
    if not isinstance(n, (int, float)):
        return "-"
    x = float(n)
    for unit in ("B", "K", "M", "G", "T"):
        if x < 1024 or unit == "T":
            return f"{x:.0f}{unit}" if unit in ("B", "K") else f"{x:.1f}{unit}"
        x /= 1024
    return f"{x:.1f}T"


def _ts(t: Any) -> str:
    return "-" if not isinstance(t, (int, float)) else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))


def _g(obj: Any, *path: str | int) -> Any:
    """``obj[path...]`` or None where any part is missing, null or of the wrong kind (a degraded document)."""
    for k in path:
        if isinstance(obj, dict) and isinstance(k, str):
            obj = obj.get(k)
        elif isinstance(obj, list) and isinstance(k, int) and -len(obj) <= k < len(obj):
            obj = obj[k]
        else:
            return None
    return obj


def _list(obj: Any, *path: str) -> list[Any]:
    got = _g(obj, *path)
    return got if isinstance(got, list) else []


def _dict(obj: Any, *path: str) -> dict[str, Any]:
    got = _g(obj, *path)
    return got if isinstance(got, dict) else {}


def _s(x: Any) -> str:
    return "-" if x is None or x == "" else str(x)


def _num(x: Any, fmt: str = "{:.1f}", unit: str = "") -> str:
    return fmt.format(x) + unit if isinstance(x, (int, float)) and not isinstance(x, bool) else "-"


def render_status(st: dict[str, Any]) -> str:
    """``clevervm status``: every item of issue 8's list, in the spirit of the Pacemaker-era output."""
    blocks = [_head(st), _nodes(st), _storage(st), _vms(st), _network(st), _fencing(st), _admin(st), _footer(st)]
    return "\n".join(line for b in blocks for line in b)


def _section(name: str, fn: Callable[[dict[str, Any]], list[str]]) -> Callable[[dict[str, Any]], list[str]]:
    """A part that cannot be drawn from a malformed document says so instead of ending the whole output."""
    def draw(st: dict[str, Any]) -> list[str]:
        try:
            return fn(st)
        except (KeyError, TypeError, ValueError, AttributeError, IndexError) as e:
            return [f"{name}: cannot show ({type(e).__name__}: {e})"]
    return draw


def _head_(st: dict[str, Any]) -> list[str]:
    d = _dict(st, "decision")
    lines = [f"Cluster {_s(st.get('cluster'))}, node {_s(st.get('node'))} (peer {_s(st.get('peer'))})   "
             f"last updated {_ts(_g(st, 'generated_at'))}",
             f"  {_s(st.get('verdict') or st.get('phase'))}",
             f"Active node: {st.get('active_node') or 'none'} ({_s(st.get('active_why'))})"]
    if d:
        lines.append(f"Decision: {_s(d.get('code'))} since {_ts(d.get('since'))}"
                     + (f"; next: {', '.join(map(str, _list(d, 'actions')))}" if _list(d, "actions") else ""))
    else:
        lines.append("Decision: none yet (waiting for the first observation of every part)")
    if st.get("not_active_because"):
        lines.append("Not active here because: " + "; ".join(map(str, _list(st, "not_active_because"))))
    return lines


def _res_cols(n: dict[str, Any]) -> list[str]:
    role = _g(n, "drbd", "role")
    cols = [f"res_drbd {_s(role)}",
            "res_Filesystem " + {True: "Started", False: "Stopped"}.get(n.get("mounted"), "-"),  # type: ignore[arg-type]
            "res_IPaddr " + {True: "Started", False: "Stopped"}.get(n.get("ip"), "-")]  # type: ignore[arg-type]
    return cols + [f"{name} {state}" for name, state in sorted(_dict(n, "vms").items())]


def _nodes_(st: dict[str, Any]) -> list[str]:
    lines: list[str] = []
    max_score = _g(st, "gateway", "max_score")
    nodes = [n for n in _list(st, "nodes") if isinstance(n, dict)]
    for n in nodes:
        online = "online  phase" if n.get("online") else f"OFFLINE ({_s(n.get('state'))})  phase when last heard"
        score = f"{_s(n.get('gateway_score'))}/{_s(max_score)}"
        lines.append(f"Node {_s(n.get('name'))}: {online} {_s(n.get('phase'))}  epoch {_s(n.get('epoch'))}  "
                     f"gateway score {score}" + ("" if n.get("eligible") is not False else "  (not eligible)"))
        stale = not n.get("self") and not n.get("online")
        lines.append(("  as last heard: " if stale else "  ") + "  ".join(_res_cols(n)))
    lines.append("Inactive resources: " + (", ".join(_inactive(nodes)) or "none"))
    counts = []
    for n in nodes:
        fc = _dict(n, "fail_counts")
        counts.append(f"{_s(n.get('name'))} " + (", ".join(f"{k}={v}" for k, v in sorted(fc.items())) if fc else "none"))
    lines.append("Fail counts: " + ("; ".join(counts) or "-"))
    return lines


def _inactive(nodes: list[dict[str, Any]]) -> list[str]:
    """What runs on no node that is online now (a node not heard counts for nothing)."""
    up = [n for n in nodes if n.get("online")]
    out = []
    if not any(_g(n, "drbd", "role") == "Primary" for n in up):
        out.append("res_drbd (no Primary)")
    if not any(n.get("mounted") for n in up):
        out.append("res_Filesystem")
    if not any(n.get("ip") for n in up):
        out.append("res_IPaddr")
    names = sorted({vm for n in nodes for vm in _dict(n, "vms")})
    out += [vm for vm in names if not any(_dict(n, "vms").get(vm) in ("running", "paused") for n in up)]
    return out


def _storage_(st: dict[str, Any]) -> list[str]:
    drbd = _dict(st, "drbd")
    fs = _dict(st, "filesystem")
    usage = _dict(fs, "usage")
    lines = []
    if drbd.get("known") is False or (drbd and drbd.get("error")):
        lines.append(f"DRBD storage: {_s(drbd.get('resource'))} cannot be read: {_s(drbd.get('error'))}")
    else:
        sync = ""
        if drbd.get("resync_percent") is not None:
            sync = f" sync {_num(drbd.get('resync_percent'))}% done"
        if drbd.get("out_of_sync_kib"):
            sync += f" out-of-sync {_s(drbd.get('out_of_sync_kib'))} KiB"
        lines.append(f"DRBD storage: {_s(drbd.get('resource'))} {_s(drbd.get('connection'))} {_s(drbd.get('role'))}/"
                     f"{_s(drbd.get('peer_role'))} {_s(drbd.get('disk'))}/{_s(drbd.get('peer_disk'))}"
                     + (f" ({drbd['replication']})" if drbd.get("replication") else "") + sync
                     + (" SUSPENDED(" + ",".join(map(str, _list(drbd, "suspended"))) + ")" if drbd.get("suspended") else "")
                     + (" SPLIT BRAIN (clevervm split-brain)" if drbd.get("split_brain") else ""))
    safe = drbd.get("config_safe")
    if safe is False:
        lines.append("  UNSAFE DRBD SETTINGS: " + ("; ".join(map(str, _list(drbd, "config_issues"))) or "see clevervm check"))
    elif safe is None:
        lines.append("  DRBD settings: not checked yet")
    else:
        lines.append("  DRBD settings: safe for fencing (clevervm check lists what was checked)")
    where = "mounted here" if fs.get("mounted") else "not mounted here"
    if fs.get("error"):
        where += f" ({fs['error']})"
    size = (f"  size {_size(usage.get('size_bytes'))} used {_size(usage.get('used_bytes'))} "
            f"free {_size(usage.get('free_bytes'))} {_num(usage.get('percent'), '{:.0f}', '%')}") if usage else ""
    lines.append(f"  {_s(fs.get('mountpoint'))} {_s(fs.get('fstype'))} on {_s(fs.get('device'))}: {where}{size}")
    return lines


def _vms_(st: dict[str, Any]) -> list[str]:
    lines = ["Virtual machines:"]
    lv = _dict(st, "libvirt")
    if lv.get("connected") is False:
        lines.append(f"  libvirt not reachable: {_s(lv.get('error'))}")
    vms = [v for v in _list(st, "vms") if isinstance(v, dict)]
    # Save images live on the replicated filesystem: a node without the mount cannot tell.
    unseen = _g(st, "filesystem", "mounted") is False
    for v in vms:
        img = v.get("save_image")
        save = "unknown (filesystem not mounted here)" if unseen else "no"
        if isinstance(img, dict):
            save = "yes" + (f" ({img['origin']})" if img.get("origin") else "")
        lines.append(f"  Name: {_s(v.get('name'))} State: {_s(v.get('state'))} Managed save: {save}"
                     + (f" Fail count: {v['fail_count']}" if v.get("fail_count") else ""))
    if not vms:
        lines.append("  none known")
    return lines


def _network_(st: dict[str, Any]) -> list[str]:
    ip = _dict(st, "ip")
    gw = _dict(st, "gateway")
    lines = [f"Floating IP {_s(ip.get('address'))} on {_s(ip.get('interface'))}: {'here' if ip.get('present') else 'not here'}"
             + (f" ({ip['error']})" if ip.get("error") else "")]
    targets = ", ".join(f"{_s(t.get('target'))} " + ("reachable" if t.get("reachable") else "UNREACHABLE")
                        + (f" {_num(t.get('rtt_ms'), '{:.2f}', ' ms')}" if t.get("rtt_ms") is not None else "")
                        for t in _list(gw, "targets") if isinstance(t, dict))
    lines.append(f"Gateway score here: {_s(gw.get('stable_score'))} of {_s(gw.get('max_score'))} (now {_s(gw.get('score'))})"
                 + (f": {targets}" if targets else ""))
    hb = _dict(st, "heartbeat")
    if hb:
        lines += render_heartbeat(hb)
    else:
        lines.append("Peer: heartbeat status not available")
    return lines


def _fencing_(st: dict[str, Any]) -> list[str]:
    fe = _dict(st, "fencing")
    red = _dict(fe, "redundancy")
    now = "can fence now" if red.get("can_fence_now") else "CANNOT FENCE NOW"
    lines = [f"Fencing: {now}; redundancy {_s(red.get('text'))}" if red else "Fencing: not known"]
    for dev in _list(fe, "devices"):
        if isinstance(dev, dict):
            lines.append(f"  level {_s(dev.get('level'))} {_s(dev.get('name'))} ({_s(dev.get('describe'))}): "
                         f"{'ok' if dev.get('usable') else 'NOT USABLE'} ({_s(dev.get('message'))}; identity {_s(dev.get('identity'))}, "
                         f"checked {_ts(dev.get('checked_at'))})")
    a = _dict(fe, "attempt")
    if a:
        lines.append(f"  fence attempt: {'running' if a.get('running') else 'ended'} since {_ts(a.get('started_at'))} "
                     f"{a.get('detail') or ''}".rstrip())
    if fe.get("failures"):
        lines.append(f"  failed fence attempts in this episode: {fe['failures']}")
    recs = _list(fe, "records")
    if recs and isinstance(recs[-1], dict):
        r = recs[-1]
        lines.append(f"  last fence record: episode {_s(r.get('episode'))} {_s(r.get('kind'))} confirmed {_ts(r.get('confirmed_at'))}")
    return lines


def _admin_(st: dict[str, Any]) -> list[str]:
    lines = []
    intent = _dict(st, "intent")
    if not st.get("heartbeat") and intent:
        ack = "acknowledged by the peer" if intent.get("acknowledged_by_peer") else "NOT YET ACKNOWLEDGED by the peer"
        lines.append(f"Intent: version {_s(intent.get('version'))} ({_s(intent.get('summary'))}): {ack}")
    bans = [b for b in _list(intent, "bans") if isinstance(b, dict)]
    for b in bans:
        rem = b.get("remaining_seconds")
        left = "until unmigrate" if rem is None else f"{_fmt_duration(float(rem))} left"
        lines.append(f"Ban: {_s(b.get('node'))} ({left}{'' if b.get('active', True) else ', expired'})")
    standby = _list(intent, "standby")
    if standby:
        lines.append("Standby: " + ", ".join(map(str, standby)) + " (until unstandby)")
    if not bans and not standby and intent:
        lines.append("Bans and standby: none")
    if intent.get("maintenance"):
        lines.append("MAINTENANCE MODE: the cluster only observes (clevervm maintenance off)")
    if intent.get("target_role") == "stopped":
        lines.append("Target role: stopped (clevervm forcestart to run the VMs again)")
    sett = _dict(st, "settings")
    if sett.get("mismatch"):
        lines.append(f"SETTINGS DIFFER: this node {_s(sett.get('this_node'))}, peer {_s(sett.get('peer'))} "
                     "(compare the [heartbeat], [fencing], [policy] and resource settings of both nodes)")
    elif sett:
        peer = "the peer's not known yet" if sett.get("peer") is None else "identical on both nodes"
        lines.append(f"Settings: fingerprint {_s(sett.get('this_node'))}, {peer}")
    ep = _dict(st, "epoch")
    lines.append(f"Epoch: {_s(ep.get('this_node'))} (peer's last seen {_s(ep.get('peer_seen'))})"
                 + (" BEHIND the peer's" if ep.get("behind") else ""))
    blk = _dict(st, "block")
    if blk:
        lines.append(f"BLOCKED: {_s(blk.get('detail'))} (clevervm unblock once resolved)")
    seq = _dict(st, "sequence")
    if seq:
        lines.append(f"Sequence in progress: {_s(seq.get('kind'))} under {_s(seq.get('gate'))} since {_ts(seq.get('started_at'))}")
    return lines


def _footer_(st: dict[str, Any]) -> list[str]:
    lines = []
    pf = _dict(st, "predicted_failover")
    lines.append(f"Predicted failover: {_s(pf.get('text'))}")
    dm = _dict(st, "daemon")
    if dm:
        lag = _g(dm, "loop", "lag_seconds")
        lines.append(f"Daemon: pid {_s(dm.get('pid'))}, version {_s(dm.get('version'))}, up "
                     f"{_fmt_duration(dm['uptime_seconds']) if isinstance(dm.get('uptime_seconds'), (int, float)) else '-'}, "
                     f"loop lag {_num(lag * 1000 if isinstance(lag, (int, float)) else None, '{:.1f}', ' ms')}")
        lines.append(f"Config: {_s(dm.get('config_path'))}")
        if dm.get("waiting_for"):
            lines.append("Waiting for the first observation of: " + ", ".join(map(str, _list(dm, "waiting_for"))))
    return lines


_head = _section("status", _head_)
_nodes = _section("nodes", _nodes_)
_storage = _section("storage", _storage_)
_vms = _section("virtual machines", _vms_)
_network = _section("network", _network_)
_fencing = _section("fencing", _fencing_)
_admin = _section("intent", _admin_)
_footer = _section("daemon", _footer_)


def _peer_state(hb: dict[str, Any]) -> str:
    state = hb.get("state")
    silent = hb.get("silent_for")
    if state == "unseen":
        return "not heard yet"
    if state == "lost":
        return f"LOST (nothing valid on any link for {silent:.1f}s)" if isinstance(silent, (int, float)) else "LOST"
    if state == "left":
        return "left (announced a clean stop)"
    if state == "restarting":
        left = hb.get("restart_expected_in")
        return "restarting" + (f" (expected back within {max(0.0, left):.0f}s)" if isinstance(left, (int, float)) else "")
    if state == "incompatible":
        p = _dict(hb, "protocol")
        reads = _list(p, "this_node_reads")
        span = f"{reads[0]}..{reads[1]}" if len(reads) == 2 else "-"
        return (f"INCOMPATIBLE (alive; it sends protocol {p.get('peer_sends') or '?'} and reads up to {_s(p.get('peer_reads_up_to'))}, "
                f"this node reads {span})")
    return _s(state)


def render_heartbeat(hb: dict[str, Any]) -> list[str]:
    """The peer, its links, the admin intent and what was dropped, for ``clevervm status``."""
    keys, proto = _dict(hb, "keys"), _dict(hb, "protocol")
    name = _s(hb.get("name"))
    head = f"Peer {name}: {_peer_state(hb)}"
    if hb.get("incarnation") is not None:
        head += f"   incarnation {hb['incarnation']}"
    if proto.get("peer_sends") is not None:
        head += f", protocol {proto['peer_sends']}"
    if keys.get("peer_uses"):
        head += f", key {keys['peer_uses']} ({_s(keys.get('peer_uses_id'))})"
    lines = [head]
    links = [ln for ln in _list(hb, "links") if isinstance(ln, dict)]
    width = max((len(_s(ln.get("name"))) for ln in links), default=0)
    for i, ln in enumerate(links):
        lname = _s(ln.get("name")).ljust(width)
        if ln.get("bound") is False:
            lines.append(f"  link {lname}  NOT BOUND: {_s(ln.get('bind_error'))}")
            continue
        state = "up  " if ln.get("up") else "DOWN"
        silent = ln.get("silent_for")
        heard = f"{state} nothing heard" if silent is None else f"{state} heard {_num(silent, '{:.2f}')}s ago"
        rtt = _num(ln.get("rtt_smoothed_ms"), "{:.2f}", " ms")
        extra = f", {ln['send_errors']} send errors" if ln.get("send_errors") else ""
        lines.append(f"  link {lname}  {heard}, loss in {_pct(ln.get('loss_in'))} out {_pct(ln.get('loss_out'))}, rtt {rtt}{extra}")
        if ln.get("peer_link") is not None and ln.get("peer_link") != i:
            lines.append(f"    this link carries {name}'s link #{ln['peer_link'] + 1}: list [[heartbeat.link]] in the same order on both nodes")
    intent = _dict(hb, "intent")
    rec = _dict(intent, "record")
    ack = f"acknowledged by {name}" if intent.get("acknowledged") else f"NOT YET ACKNOWLEDGED by {name}"
    origin = f" by {rec['origin']}" if rec.get("origin") else ""
    lines.append(f"Intent: version {_s(rec.get('version'))}{origin} ({_s(intent.get('summary'))}): {ack}")
    if intent.get("superseded"):
        lost = _dict(intent, "superseded")
        lines.append(f"  this node's change (version {_s(lost.get('version'))}) was replaced before the peer acknowledged it; check the record")
    if keys.get("next_key_file"):
        lines.append(f"Keys: sending with key_file ({_s(keys.get('key_file'))}), also accepting next_key_file ({keys['next_key_file']})")
    drops = _dict(hb, "drops")
    if drops:
        lines.append("Dropped datagrams: " + ", ".join(f"{k} {v}" for k, v in sorted(drops.items())))
    return lines


def _val(v: Any) -> str:
    """An input value for people: no Python reprs."""
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, dict):
        return ", ".join(f"{k} {_val(x)}" for k, x in v.items()) or "none"
    if isinstance(v, list):
        return "; ".join(_val(x) for x in v) or "none"
    return str(v)


def render_why(w: dict[str, Any]) -> str:
    d = _dict(w, "decision")
    if not d:
        return "No decision yet: waiting for the first observation of " + ", ".join(map(str, _list(w, "waiting_for") or ["the parts"]))
    lines = [f"{_s(d.get('phase'))}: {_s(d.get('sentence'))}",
             f"reason {_s(d.get('code'))} (since {_ts(d.get('since'))}): {_s(d.get('meaning'))}",
             f"active node: {w.get('active_node') or 'none'} ({_s(w.get('active_why'))})"]
    if _list(w, "not_active_because"):
        lines.append("not active here because:")
        lines += [f"  - {x}" for x in _list(w, "not_active_because")]
    lines.append("inputs that mattered:")
    for group in _list(w, "mattered"):
        lines.append(f"  {group}:")
        for k, v in _dict(w, "inputs", str(group)).items():
            lines.append(f"    {k}: {_val(v)}")
    return "\n".join(lines)


def render_history(h: dict[str, Any]) -> str:
    lines = ["Recent decisions:"]
    for d in _list(h, "decisions"):
        if isinstance(d, dict):
            lines.append(f"  {_ts(d.get('wall'))} {_s(d.get('phase')):<11} {_s(d.get('code'))}: {_s(d.get('sentence'))}")
    for t in _list(h, "timelines"):
        if isinstance(t, dict):
            lines += render_timeline(t)
    return "\n".join(lines)


def render_timeline(t: dict[str, Any]) -> list[str]:
    """One failover/handover timeline of ``clevervm history``: its phases and the resource sequences' steps."""
    total = t.get("total_seconds")
    lines = [f"Timeline {_s(t.get('kind'))} started {_ts(t.get('started_at'))}: {_s(t.get('outcome'))}"
             + (f", {total:.2f} s" if isinstance(total, (int, float)) else "")]
    for ph in _list(t, "phases"):
        if isinstance(ph, dict):
            lines.append(f"  {_s(ph.get('from'))} -> {_s(ph.get('to'))}: {_num(ph.get('seconds'), '{:.3f}', ' s')}")
    for sq in _list(t, "sequences"):
        if isinstance(sq, dict):
            steps = ", ".join(f"{_s(x.get('action'))} {_s(x.get('step'))} {_num(x.get('seconds'), '{:.2f}', 's')}"
                              for x in _list(sq, "steps") if isinstance(x, dict))
            lines.append(f"  {_s(sq.get('kind'))} sequence {_s(sq.get('outcome'))}: {steps}")
    return lines


def render_check(c: dict[str, Any]) -> str:
    marks = {"ok": "ok  ", "warn": "WARN", "fail": "FAIL"}
    lines = [f"[{marks.get(str(ln.get('severity')), _s(ln.get('severity')))}] {_s(ln.get('area'))}: {_s(ln.get('text'))}"
             for ln in _list(c, "lines") if isinstance(ln, dict)]
    pf = _dict(c, "predicted_failover")
    if pf:
        lines.append(f"predicted failover: {_s(pf.get('text'))}")
    lines.append("check passed" if c.get("ok") else "check FAILED: fix the FAIL lines")
    return "\n".join(lines)


def _generation(g: Any) -> str:
    """DRBD's generation identifiers as `drbdadm show-gi` names them."""
    if not isinstance(g, dict):
        return "-"
    if g.get("error"):
        return f"unreadable ({g['error']})"
    hist = ":".join(map(str, _list(g, "history"))) or "-"
    return f"current {_s(g.get('current'))}, bitmap {_s(g.get('bitmap'))}, history {hist}"


def render_split_brain(s: dict[str, Any]) -> str:
    here, there = _dict(s, "this_node"), _dict(s, "peer")
    lines = [("SPLIT BRAIN reported" if s.get("split_brain") else "no split brain reported by DRBD"),
             f"  {_s(here.get('node'))} (here): role {_s(here.get('role'))}, disk {_s(here.get('disk'))}, epoch {_s(here.get('epoch'))}, "
             f"generation {_generation(here.get('generation'))}",
             f"  {_s(there.get('node'))}: {_s(there.get('heard'))}, role {_s(there.get('role'))}, disk {_s(there.get('disk'))}, "
             f"epoch {_s(there.get('epoch'))}, data {_s(there.get('data_uuid'))}",
             f"newer data: {s.get('newer_data') or 'unknown'} ({s.get('why')})", "recovery:"]
    lines += [f"  {x}" for x in _list(s, "recovery")]
    if s.get("ran"):
        lines.append("ran: " + "; ".join(s["ran"]))
    if s.get("next"):
        lines.append(s["next"])
    return "\n".join(lines)

