"""The page's view model: the daemon's status (and history) turned into what the page draws.

This is the one place that knows the daemon's status schema
(docs/status-schema.md). The browser script only draws what this returns:
node cards, sections of ``[label, value, tone]`` rows, an optional progress
bar, the decision list and the timeline bar.

Invariants:
- :func:`build` never raises on a document it does not understand: every
  read goes through :func:`_get`, which yields None for a missing key or a
  value of the wrong type, and a section with nothing to show says "not
  available" instead of disappearing or breaking the page.
- Pure: the wall-clock time and the local node come in as arguments.
- Tones are one of ``ok``, ``warn``, ``bad``, ``muted``.
"""

from __future__ import annotations

import time
from typing import Any

VIEW_VERSION = 1
NA = "not available"
ACTIVE_PHASES = ("PRIMARY", "PROMOTING", "DEMOTING")
BAD_PHASES = ("BLOCKED", "FENCING")

Row = list[Any]  # [label, value, tone]


def _get(obj: Any, *path: str | int, kind: type | tuple[type, ...] | None = None) -> Any:
    """``obj[path0][path1]...`` or None when any step is missing or not a container (or not ``kind``)."""
    for step in path:
        if isinstance(step, int):
            if not isinstance(obj, list) or not -len(obj) <= step < len(obj):
                return None
            obj = obj[step]
        else:
            if not isinstance(obj, dict):
                return None
            obj = obj.get(step)
    if kind is None:
        return obj
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if not isinstance(obj, kinds) or (isinstance(obj, bool) and bool not in kinds):  # True is no count
        return None
    return obj


def _num(obj: Any, *path: str | int) -> float | None:
    v = _get(obj, *path, kind=(int, float))
    return float(v) if v is not None else None


def _str(obj: Any, *path: str | int) -> str | None:
    v = _get(obj, *path)
    return v if isinstance(v, str) and v else None


def _list(obj: Any, *path: str | int) -> list[Any]:
    v = _get(obj, *path, kind=list)
    return v if v is not None else []


def _clock(wall: float | None) -> str:
    return time.strftime("%H:%M:%S", time.localtime(wall)) if wall is not None else "?"


def _seconds(s: float | None) -> str:
    if s is None:
        return "?"
    if s < 1:
        return f"{s * 1000:.0f} ms"
    if s < 120:
        return f"{s:.1f} s"
    return f"{s / 60:.1f} min"


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x * 100:.1f}%"


def _section(sid: str, title: str, rows: list[Row], note: str | None = None, progress: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"id": sid, "title": title, "available": bool(rows), "note": note or ("" if rows else NA), "rows": rows, "progress": progress}


# --------------------------------------------------------------------------- nodes


def _local_report(st: dict[str, Any]) -> dict[str, Any] | None:
    """This node's own report (the record it sends its peer), where the status carries it."""
    for path in (("local", "report"), ("report",), ("local",)):
        rep = _get(st, *path, kind=dict)
        if rep is not None and ("phase" in rep or "resources" in rep):
            return dict(rep)
    return None


def _resource_rows(report: dict[str, Any] | None) -> list[Row]:
    res = _get(report, "resources", kind=dict)
    if res is None:
        return []
    rows: list[Row] = []
    drbd = _get(res, "drbd", kind=dict) or {}
    role, disk = _str(drbd, "role"), _str(drbd, "disk")
    if role or disk:
        rows.append(["DRBD", f"{role or '?'} / {disk or '?'}", "ok" if disk == "UpToDate" else "warn"])
    for label, key in (("filesystem", "mounted"), ("floating IP", "ip")):
        v = _get(res, key, kind=bool)
        rows.append([label, NA if v is None else ("mounted" if key == "mounted" and v else "up" if v else "no"), "muted" if not v else "ok"])
    for vm in _list(res, "vms"):
        name, state = _str(vm, "name"), _str(vm, "state") or "unknown"
        if name:
            fails = _num(vm, "fail_count")
            extra = f" ({int(fails)} failures)" if fails else ""
            rows.append([f"VM {name}", state + extra, "ok" if state == "running" else "bad" if state == "crashed" or fails else "muted"])
    return rows


def _node(name: str, *, local: bool, state: str, tone: str, phase: str | None, report: dict[str, Any] | None,
          badges: list[dict[str, str]]) -> dict[str, Any]:
    gs = _num(report, "gateway_score")
    rows = _resource_rows(report)
    if gs is not None:
        rows.append(["gateway score", f"{gs:g}", "ok" if gs > 0 else "bad"])
    eligible = _get(report, "eligible", kind=bool)
    if eligible is False:
        why = ", ".join(str(x) for x in _list(report, "ineligible_reasons")) or "no reason given"
        rows.append(["eligible", f"no: {why}", "warn"])
    epoch = _get(report, "epoch", kind=dict)
    if epoch is not None:
        rows.append(["epoch", f"{_get(epoch, 'counter')} ({_get(epoch, 'node')})", "muted"])
    return {"name": name, "local": local, "state": state, "tone": tone, "phase": phase or "?",
            "active": phase in ACTIVE_PHASES if phase else None, "badges": badges, "rows": rows,
            "note": "" if rows else "resources not reported"}


def _intent_badges(record: dict[str, Any] | None, node: str, now: float) -> list[dict[str, str]]:
    out = []
    for ban in _list(record, "bans"):
        if _str(ban, "node") == node:
            until = _num(ban, "until")
            if until is None:
                out.append({"text": "banned (migrate)", "tone": "warn"})
            elif until > now:
                out.append({"text": f"banned for {_seconds(until - now)}", "tone": "warn"})
    if node in [x for x in _list(record, "standby") if isinstance(x, str)]:
        out.append({"text": "standby", "tone": "warn"})
    return out


def _peer_state(hb: dict[str, Any] | None) -> tuple[str, str]:
    state = _str(hb, "state")
    if state is None:
        return "unknown", "muted"
    silent = _num(hb, "silent_for")
    if state == "alive":
        return "online", "ok"
    if state == "lost":
        return f"offline (silent {_seconds(silent)})" if silent is not None else "offline", "bad"
    if state == "left":
        return "stopped (announced a clean stop)", "warn"
    if state == "restarting":
        return "restarting", "warn"
    if state == "unseen":
        return "not heard yet", "warn"
    return state, "warn"


# --------------------------------------------------------------------------- sections


def _drbd_section(st: dict[str, Any], local_rep: dict[str, Any] | None) -> dict[str, Any]:
    d = _get(st, "drbd", kind=dict)
    rows: list[Row] = []
    progress = None
    if d is not None:
        res = _str(d, "resource")
        conn = _str(d, "connection")
        rows.append(["resource", res or "?", "muted"])
        rows.append(["connection", conn or "?", "ok" if conn == "Connected" else "bad"])
        rows.append(["roles", f"{_str(d, 'role') or '?'} / {_str(d, 'peer_role') or '?'}", "muted"])
        disk, pdisk = _str(d, "disk"), _str(d, "peer_disk")
        rows.append(["disks", f"{disk or '?'} / {pdisk or '?'}", "ok" if disk == pdisk == "UpToDate" else "warn"])
        oos = _num(d, "out_of_sync_bytes")
        if oos:
            rows.append(["out of sync", f"{oos / 2**20:.1f} MiB", "warn"])
        done = _num(d, "resync", "done")
        if done is None:
            pct = _num(d, "sync_percent")
            done = pct / 100 if pct is not None else None
        if done is not None and done < 1:
            eta = _num(d, "resync", "eta_seconds")
            progress = {"label": "resync" + (f", {_seconds(eta)} left" if eta is not None else ""), "fraction": max(0.0, min(1.0, done))}
        if _get(d, "split_brain", kind=bool):
            rows.append(["split brain", "DRBD reports split brain", "bad"])
        sus = _str(d, "suspended")
        if sus:
            rows.append(["I/O", f"suspended ({sus})", "bad"])
    else:
        drbd = _get(local_rep, "resources", "drbd", kind=dict)
        if drbd is not None:
            rows.append(["connection", _str(drbd, "connection") or "?", "ok" if _str(drbd, "connection") == "Connected" else "bad"])
            rows.append(["disks", f"{_str(drbd, 'disk') or '?'} / {_str(drbd, 'peer_disk') or '?'}", "muted"])
    return _section("drbd", "DRBD", rows, progress=progress)


def _links_section(hb: dict[str, Any] | None) -> dict[str, Any]:
    rows: list[Row] = []
    for ln in _list(hb, "links"):
        name = _str(ln, "name") or "?"
        if _get(ln, "bound", kind=bool) is False:
            rows.append([name, f"not bound: {_str(ln, 'bind_error') or '?'}", "bad"])
            continue
        up = _get(ln, "up", kind=bool)
        rtt = _num(ln, "rtt_smoothed_ms")
        text = (f"{'up' if up else 'DOWN'}, loss in {_pct(_num(ln, 'loss_in'))} out {_pct(_num(ln, 'loss_out'))}, "
                f"rtt {'-' if rtt is None else f'{rtt:.2f} ms'}")
        rows.append([name, text, "ok" if up else "bad"])
    return _section("links", "Heartbeat links", rows)


def _gateway_section(st: dict[str, Any], local_rep: dict[str, Any] | None, peer_rep: dict[str, Any] | None,
                     node: str, peer: str) -> dict[str, Any]:
    rows: list[Row] = []
    g = _get(st, "gateway", kind=dict)
    mine = _num(g, "score") if g is not None else _num(local_rep, "gateway_score")
    theirs = _num(peer_rep, "gateway_score")
    for who, score in ((node, mine), (peer, theirs)):
        if score is not None:
            rows.append([who, f"score {score:g}", "ok" if score > 0 else "bad"])
    for t in _list(g, "targets"):
        addr = _str(t, "target") or _str(t, "address")
        if addr:
            ok = _get(t, "reachable", kind=bool)
            rows.append([addr, "reachable" if ok else "unreachable" if ok is False else "no data yet", "ok" if ok else "bad" if ok is False else "muted"])
    return _section("gateway", "Gateway", rows)


def _fencing_section(st: dict[str, Any]) -> dict[str, Any]:
    f = _get(st, "fencing", kind=dict)
    rows: list[Row] = []
    if f is not None:
        ready = _get(f, "ready", kind=bool)
        if ready is not None:
            rows.append(["ready", "yes" if ready else f"no: {_str(f, 'why_not') or '?'}", "ok" if ready else "bad"])
        red = _str(f, "redundancy")
        if red:
            rows.append(["redundancy", red, "warn" if red.startswith("none") else "ok"])
        for lvl_i, lvl in enumerate(_list(f, "levels"), 1):
            for dev in _list(lvl, "devices"):
                name = _str(dev, "name") or "?"
                health = _str(dev, "health") or _str(dev, "state") or "unknown"
                rows.append([f"level {lvl_i}: {name}", health, "ok" if health in ("ok", "healthy") else "warn"])
    return _section("fencing", "Fencing", rows)


def _intent_section(hb: dict[str, Any] | None, now: float) -> dict[str, Any]:
    intent = _get(hb, "intent", kind=dict)
    rec = _get(intent, "record", kind=dict)
    rows: list[Row] = []
    if rec is not None:
        rows.append(["target role", _str(rec, "target_role") or "?", "ok" if _str(rec, "target_role") == "started" else "warn"])
        m = _get(rec, "maintenance", kind=bool)
        rows.append(["maintenance", "on (observe only)" if m else "off", "warn" if m else "ok"])
        bans = []
        for b in _list(rec, "bans"):
            until = _num(b, "until")
            if until is None or until > now:
                bans.append(f"{_str(b, 'node')}" + ("" if until is None else f" ({_seconds(until - now)} left)"))
        rows.append(["bans", ", ".join(bans) or "none", "warn" if bans else "ok"])
        sb = [x for x in _list(rec, "standby") if isinstance(x, str)]
        rows.append(["standby", ", ".join(sb) or "none", "warn" if sb else "ok"])
        ack = _get(intent, "acknowledged", kind=bool)
        rows.append(["replicated", f"version {_get(rec, 'version')}: " + ("acknowledged by the peer" if ack else "not yet acknowledged by the peer"),
                     "ok" if ack else "warn"])
    return _section("intent", "Operator intent", rows)


def _failcount_section(st: dict[str, Any], reports: list[tuple[str, dict[str, Any] | None]]) -> dict[str, Any]:
    rows: list[Row] = []
    explicit = _list(st, "fail_counts")
    for fc in explicit:
        n = _num(fc, "count")
        rows.append([f"{_str(fc, 'node') or '?'}: {_str(fc, 'resource') or _str(fc, 'vm') or '?'}", f"{n:g}" if n is not None else "?",
                     "bad" if n else "ok"])
    if not explicit:
        for node, rep in reports:
            for vm in _list(rep, "resources", "vms"):
                n = _num(vm, "fail_count")
                if n:
                    rows.append([f"{node}: {_str(vm, 'name') or '?'}", f"{n:g}", "bad"])
        if any(_get(rep, "resources", kind=dict) is not None for _n, rep in reports) and not rows:
            rows.append(["all resources", "no failures", "ok"])
    return _section("failcounts", "Fail counts", rows)


def _decisions(st: dict[str, Any], history: Any, history_error: str | None) -> dict[str, Any]:
    items = _list(history, "decisions") or _list(st, "decisions")
    rows = []
    for d in items[-12:]:
        code = _str(d, "code") or _str(d, "reason")
        text = _str(d, "sentence") or _str(d, "verdict") or ""
        if code or text:
            rows.append({"at": _clock(_num(d, "at") or _num(d, "wall")), "code": code or "?", "text": text})
    rows.reverse()  # newest first
    note = "" if rows else (history_error or NA)
    return {"available": bool(rows), "note": note, "rows": rows}


def _timeline(history: Any) -> dict[str, Any]:
    timelines = [t for t in _list(history, "timelines") if isinstance(t, dict)]
    if not timelines:
        return {"available": False, "note": NA, "title": "", "phases": []}
    t = timelines[-1]
    named: list[tuple[str, float]] = []
    for p in _list(t, "phases"):
        secs = _num(p, "seconds")
        if secs is not None and secs >= 0:
            named.append((_str(p, "name") or "?", secs))
    total = _num(t, "total_seconds") or sum(secs for _n, secs in named)
    phases = [{"name": n, "seconds": secs, "text": _seconds(secs), "fraction": secs / total if total else 0.0} for n, secs in named]
    kind = _str(t, "kind") or "transition"
    title = f"{kind} at {_clock(_num(t, 'started_at'))}: {_seconds(total)}"
    moved = (_str(t, "from"), _str(t, "to"))
    if all(moved):
        title += f" ({moved[0]} → {moved[1]})"
    return {"available": bool(phases), "note": "" if phases else NA, "title": title, "phases": phases}


# --------------------------------------------------------------------------- the whole page


def build(snapshot: dict[str, Any], now: float | None = None) -> dict[str, Any]:
    """The view model of one feed snapshot (see the module docstring)."""
    now = time.time() if now is None else now
    st = _get(snapshot, "status", kind=dict)
    fetched = _num(snapshot, "fetched_at")
    daemon = {"ok": st is not None, "message": "" if st is not None else f"daemon not answering: {_str(snapshot, 'error') or 'unknown error'}",
              "fetched_at": fetched, "fetched": _clock(fetched)}
    if st is None:
        return {"view": VIEW_VERSION, "daemon": daemon, "cluster": "", "local": "", "summary": {"active": None, "text": daemon["message"], "code": None, "tone": "bad"},
                "nodes": [], "sections": [], "decisions": {"available": False, "note": NA, "rows": []},
                "timeline": {"available": False, "note": NA, "title": "", "phases": []}}
    node = _str(st, "node") or "this node"
    peer_name = _str(st, "peer") or "peer"
    hb = _get(st, "heartbeat", kind=dict)
    local_rep = _local_report(st)
    peer_rep = _get(hb, "report", kind=dict)
    record = _get(hb, "intent", "record", kind=dict)
    phase = _str(st, "phase")
    local_badges = _intent_badges(record, node, now)
    peer_badges = _intent_badges(record, peer_name, now)
    if _get(record, "maintenance", kind=bool):
        local_badges.append({"text": "maintenance", "tone": "warn"})
        peer_badges.append({"text": "maintenance", "tone": "warn"})
    pstate, ptone = _peer_state(hb)
    peer_phase = _str(peer_rep, "phase") if pstate == "online" else None
    nodes = [
        _node(node, local=True, state="online (this console's node)", tone="bad" if phase in BAD_PHASES else "ok", phase=phase,
              report=local_rep, badges=local_badges),
        _node(peer_name, local=False, state=pstate, tone=ptone, phase=peer_phase, report=peer_rep if pstate == "online" else None,
              badges=peer_badges),
    ]
    active = _str(st, "active") or next((n["name"] for n in nodes if n["active"]), None)
    for n in nodes:
        if n["active"] is None and active is not None:
            n["active"] = n["name"] == active
    why = _str(st, "decision", "sentence") or _str(st, "verdict") or ""
    code = _str(st, "decision", "code") or _str(st, "reason")
    text = (f"{active} is active" if active else "no node is active") + (f": {why}" if why else "")
    sections = [
        _drbd_section(st, local_rep),
        _gateway_section(st, local_rep, peer_rep, node, peer_name),
        _links_section(hb),
        _fencing_section(st),
        _intent_section(hb, now),
        _failcount_section(st, [(node, local_rep), (peer_name, peer_rep)]),
    ]
    return {"view": VIEW_VERSION, "daemon": daemon, "cluster": _str(st, "cluster") or "", "local": node,
            "summary": {"active": active, "text": text, "code": code,
                        "tone": "bad" if phase in BAD_PHASES else "ok" if active else "warn"},
            "nodes": nodes, "sections": sections,
            "decisions": _decisions(st, _get(snapshot, "history"), _str(snapshot, "history_error")),
            "timeline": _timeline(_get(snapshot, "history"))}
