"""The page's view model: the daemon's status (and history) turned into what the page draws.

This is the one place that knows the daemon's status document
(``daemon/status.py``, ``schema`` 1: ``nodes``, ``active_node``,
``active_why``, ``decision``, ``drbd``, ``filesystem``, ``gateway``,
``heartbeat``, ``fencing``, ``intent``, ``settings``...) and its ``history``
(``daemon/history.py``: ``decisions``, ``timelines``). A document with another
``schema`` is not guessed at: the page says so. The browser script only draws
what :func:`build` returns: node cards, sections of ``[label, value, tone]``
rows, an optional progress bar, the decision list and the timeline bar.

Invariants:
- :func:`build` never raises on a document it does not understand: every
  read goes through :func:`_get`, which yields None for a missing key or a
  value of the wrong type, and a section with nothing to show says "not
  available" instead of disappearing or breaking the page.
- Pure: the wall-clock time comes in as an argument.
- Tones are one of ``ok``, ``warn``, ``bad``, ``muted``.
"""

from __future__ import annotations

import time
from typing import Any

VIEW_VERSION = 1
NA = "not available"
BAD_PHASES = ("BLOCKED", "FENCING")
SCHEMA = 1
# fencing.monitor's redundancy grades, toned as `clevervm check` does (ok / warn / fail).
GRADE_TONE = {"ok": "ok", "degraded": "warn", "none": "bad"}

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


def _bool(obj: Any, *path: str | int) -> bool | None:
    v = _get(obj, *path, kind=bool)
    return v if isinstance(v, bool) else None


def _list(obj: Any, *path: str | int) -> list[Any]:
    v = _get(obj, *path, kind=list)
    return v if v is not None else []


def _dict(obj: Any, *path: str | int) -> dict[str, Any]:
    v = _get(obj, *path, kind=dict)
    return v if v is not None else {}


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


def _bytes(n: float | None) -> str:
    if n is None:
        return "?"
    for unit, size in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n:.0f} B"


def _section(sid: str, title: str, rows: list[Row], progress: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"id": sid, "title": title, "available": bool(rows), "note": "" if rows else NA, "rows": rows, "progress": progress}


# --------------------------------------------------------------------------- nodes


def _state_text(rec: dict[str, Any]) -> tuple[str, str]:
    if _bool(rec, "self"):
        return "online (this console's node)", "ok"
    state = _str(rec, "state")
    silent = _num(rec, "silent_for_seconds")
    if state in (None, "unknown"):
        return "unknown", "muted"
    if state == "alive":
        return "online", "ok"
    if state == "lost":
        return (f"offline (silent {_seconds(silent)})" if silent is not None else "offline"), "bad"
    if state == "left":
        return "stopped (announced a clean stop)", "warn"
    if state == "restarting":
        return "restarting", "warn"
    if state == "unseen":
        return "not heard yet", "warn"
    return state, "warn"


def _badges(name: str, intent: dict[str, Any] | None) -> list[dict[str, str]]:
    out = []
    for ban in _list(intent, "bans"):
        if _str(ban, "node") == name and _bool(ban, "active") is not False:
            left = _num(ban, "remaining_seconds")
            out.append({"text": "banned (migrate)" if left is None else f"banned for {_seconds(left)}", "tone": "warn"})
    if name in [x for x in _list(intent, "standby") if isinstance(x, str)]:
        out.append({"text": "standby", "tone": "warn"})
    if _bool(intent, "maintenance"):
        out.append({"text": "maintenance", "tone": "warn"})
    return out


def _node_card(rec: dict[str, Any], intent: dict[str, Any] | None, not_active_because: list[str], active: str | None) -> dict[str, Any]:
    """One node's card; ``active`` is the daemon's word (``active_node``), not a guess from the phases."""
    name = _str(rec, "name") or "?"
    state, tone = _state_text(rec)
    online = bool(_bool(rec, "self") or _bool(rec, "online"))
    phase = _str(rec, "phase") if online else None
    rows: list[Row] = []
    if online:
        drbd = _dict(rec, "drbd")
        role, disk = _str(drbd, "role"), _str(drbd, "disk")
        if role or disk:
            rows.append(["DRBD", f"{role or '?'} / {disk or '?'}", "ok" if disk == "UpToDate" else "warn"])
        for label, key, yes in (("filesystem", "mounted", "mounted"), ("floating IP", "ip", "up")):
            v = _bool(rec, key)
            if v is not None:
                rows.append([label, yes if v else "no", "ok" if v else "muted"])
        fails = _dict(rec, "fail_counts")
        for vm, vstate in sorted(_dict(rec, "vms").items()):
            n = _num(fails, vm)
            text = (vstate if isinstance(vstate, str) else "unknown") + (f" ({n:g} failures)" if n else "")
            rows.append([f"VM {vm}", text, "ok" if vstate == "running" else "bad" if vstate == "crashed" or n else "muted"])
        gs = _num(rec, "gateway_score")
        if gs is not None:
            rows.append(["gateway score", f"{gs:g}", "ok" if gs > 0 else "bad"])
        if _bool(rec, "eligible") is False:
            rows.append(["eligible", "no", "warn"])
        if _str(rec, "epoch"):
            rows.append(["epoch", _str(rec, "epoch"), "muted"])
        if _bool(rec, "self") and not_active_because:
            rows.append(["not active because", "; ".join(not_active_because), "muted"])
    return {"name": name, "local": bool(_bool(rec, "self")), "state": state, "tone": tone, "phase": phase or "?",
            "active": name == active, "badges": _badges(name, intent), "rows": rows,
            "note": "" if rows else ("resources not reported" if online else "nothing known while it is not heard")}


# --------------------------------------------------------------------------- sections


def _drbd_section(st: dict[str, Any]) -> dict[str, Any]:
    d = _get(st, "drbd", kind=dict)
    rows: list[Row] = []
    progress = None
    if d is not None:
        conn = _str(d, "connection")
        rows.append(["resource", _str(d, "resource") or "?", "muted"])
        rows.append(["connection", conn or "?", "ok" if conn == "Connected" else "bad"])
        rows.append(["roles", f"{_str(d, 'role') or '?'} / {_str(d, 'peer_role') or '?'}", "muted"])
        disk, pdisk = _str(d, "disk"), _str(d, "peer_disk")
        rows.append(["disks", f"{disk or '?'} / {pdisk or '?'}", "ok" if disk == pdisk == "UpToDate" else "warn"])
        if _str(d, "replication"):
            rows.append(["replication", _str(d, "replication"), "muted"])
        oos = _num(d, "out_of_sync_kib")
        if oos:
            rows.append(["out of sync", _bytes(oos * 1024), "warn"])
        pct = _num(d, "resync_percent")
        if pct is not None and pct < 100:
            progress = {"label": "resync", "fraction": max(0.0, min(1.0, pct / 100))}
        if _bool(d, "split_brain"):
            rows.append(["split brain", "DRBD reports split brain", "bad"])
        suspended = [str(x) for x in _list(d, "suspended")]
        if suspended:
            rows.append(["I/O", f"suspended ({', '.join(suspended)})", "bad"])
        if _bool(d, "config_safe") is False:
            rows.append(["configuration", "; ".join(str(x) for x in _list(d, "config_issues")) or "unsafe", "bad"])
        if _str(d, "error"):
            rows.append(["error", _str(d, "error"), "bad"])
    fs = _get(st, "filesystem", kind=dict)
    if fs is not None:
        usage = _dict(fs, "usage")
        mounted = _bool(fs, "mounted")
        text = f"{_str(fs, 'mountpoint') or '?'}: " + ("mounted" if mounted else "not mounted")
        if usage:
            text += (f", {_bytes(_num(usage, 'used_bytes'))} of {_bytes(_num(usage, 'size_bytes'))} used "
                     f"({_num(usage, 'percent') or 0:g}%), {_bytes(_num(usage, 'free_bytes'))} free")
        rows.append(["filesystem", text, "ok" if mounted else "muted"])
    return _section("drbd", "DRBD and storage", rows, progress)


def _links_section(st: dict[str, Any]) -> dict[str, Any]:
    rows: list[Row] = []
    for ln in _list(st, "heartbeat", "links"):
        name = _str(ln, "name") or "?"
        if _bool(ln, "bound") is False:
            rows.append([name, f"not bound: {_str(ln, 'bind_error') or '?'}", "bad"])
            continue
        up = _bool(ln, "up")
        rtt = _num(ln, "rtt_smoothed_ms")
        text = (f"{'up' if up else 'DOWN'}, loss in {_pct(_num(ln, 'loss_in'))} out {_pct(_num(ln, 'loss_out'))}, "
                f"rtt {'-' if rtt is None else f'{rtt:.2f} ms'}")
        rows.append([name, text, "ok" if up else "bad"])
    return _section("links", "Heartbeat links", rows)


def _gateway_section(st: dict[str, Any], nodes: list[dict[str, Any]]) -> dict[str, Any]:
    rows: list[Row] = []
    g = _dict(st, "gateway")
    top = _num(g, "max_score")
    for rec in nodes:
        score = _num(g, "score") if _bool(rec, "self") and g else _num(rec, "gateway_score")
        if score is not None:
            rows.append([_str(rec, "name") or "?", f"score {score:g}" + (f" of {top:g}" if top else ""), "ok" if score > 0 else "bad"])
    for t in _list(g, "targets"):
        addr = _str(t, "target") or _str(t, "address")
        if addr:
            ok, rtt = _bool(t, "reachable"), _num(t, "rtt_ms")
            text = ("reachable" + (f", {rtt:.1f} ms" if rtt is not None else "")) if ok else "unreachable" if ok is False else "no data yet"
            rows.append([addr, text, "ok" if ok else "bad" if ok is False else "muted"])
    return _section("gateway", "Gateway", rows)


def _fencing_section(st: dict[str, Any]) -> dict[str, Any]:
    f = _get(st, "fencing", kind=dict)
    rows: list[Row] = []
    if f is not None:
        red = _dict(f, "redundancy")
        can = _bool(red, "can_fence_now")
        if can is not None:
            rows.append(["ready", "yes: the peer can be fenced now" if can else "no: the peer cannot be fenced now", "ok" if can else "bad"])
        if _str(red, "text"):
            rows.append(["redundancy", _str(red, "text"), GRADE_TONE.get(_str(red, "grade") or "", "warn")])
        for dev in _list(f, "devices"):
            ok = _bool(dev, "ok")
            text = _str(dev, "message") or ("ok" if ok else "not checked yet")
            if _str(dev, "power"):
                text += f"; peer power {_str(dev, 'power')}"
            rows.append([f"level {_get(dev, 'level')}: {_str(dev, 'name') or '?'}", text, "ok" if ok and _bool(dev, "usable") is not False
                         else "bad" if ok is False else "warn"])
        att = _dict(f, "attempt")
        if att:
            rows.append(["fence attempt", ("running" if _bool(att, "running") else "finished") + f": {_str(att, 'detail') or ''}",
                         "warn"])
    pf = _str(st, "predicted_failover", "text")
    if pf:
        rows.append(["predicted failover", pf, "muted"])
    return _section("fencing", "Fencing", rows)


def _intent_section(st: dict[str, Any], intent: dict[str, Any] | None) -> dict[str, Any]:
    rows: list[Row] = []
    if intent is not None:
        role = _str(intent, "target_role")
        rows.append(["target role", role or "?", "ok" if role == "started" else "warn"])
        m = _bool(intent, "maintenance")
        rows.append(["maintenance", "on (observe only)" if m else "off", "warn" if m else "ok"])
        bans = []
        for b in _list(intent, "bans"):
            if _bool(b, "active") is not False:
                left = _num(b, "remaining_seconds")
                bans.append(f"{_str(b, 'node')}" + ("" if left is None else f" ({_seconds(left)} left)"))
        rows.append(["bans", ", ".join(bans) or "none", "warn" if bans else "ok"])
        sb = [x for x in _list(intent, "standby") if isinstance(x, str)]
        rows.append(["standby", ", ".join(sb) or "none", "warn" if sb else "ok"])
        ack = _bool(intent, "acknowledged_by_peer")
        rows.append(["replicated", f"version {_get(intent, 'version')}: " + ("acknowledged by the peer" if ack else "not yet acknowledged by the peer"),
                     "ok" if ack else "warn"])
    settings = _dict(st, "settings")
    if _bool(settings, "mismatch"):
        rows.append(["settings", f"DIFFER between the nodes ({_str(settings, 'this_node')} here, {_str(settings, 'peer')} on the peer)", "bad"])
    return _section("intent", "Operator intent", rows)


def _failcount_section(nodes: list[dict[str, Any]]) -> dict[str, Any]:
    rows: list[Row] = []
    reported = False
    for rec in nodes:
        counts = _get(rec, "fail_counts", kind=dict)
        if counts is None:
            continue
        reported = True
        for vm, n in sorted(counts.items()):
            if isinstance(n, int | float) and not isinstance(n, bool) and n:
                rows.append([f"{_str(rec, 'name')}: {vm}", f"{n:g}", "bad"])
    if reported and not rows:
        rows.append(["all VMs", "no failures", "ok"])
    return _section("failcounts", "Fail counts", rows)


def _decisions(history: Any, history_error: str | None) -> dict[str, Any]:
    rows = []
    for d in _list(history, "decisions")[-12:]:
        code = _str(d, "code")
        text = _str(d, "sentence") or ""
        if code or text:
            rows.append({"at": _clock(_num(d, "wall")), "code": code or "?", "text": text})
    rows.reverse()  # newest first
    return {"available": bool(rows), "note": "" if rows else (history_error or NA), "rows": rows}


def _timeline(history: Any) -> dict[str, Any]:
    timelines = [t for t in _list(history, "timelines") if isinstance(t, dict) and _list(t, "phases")]
    if not timelines:
        return {"available": False, "note": NA, "title": "", "phases": []}
    t = timelines[-1]
    named: list[tuple[str, float]] = []
    for p in _list(t, "phases"):
        secs = _num(p, "seconds")
        if secs is not None and secs >= 0:
            name = f"{_str(p, 'from') or '?'} → {_str(p, 'to') or '?'}"
            named.append((name, secs))
    total = _num(t, "total_seconds") or sum(secs for _n, secs in named)
    phases = [{"name": n, "seconds": secs, "text": _seconds(secs), "fraction": secs / total if total else 0.0} for n, secs in named]
    kind = (_str(t, "kind") or "transition").replace("_out", " (giving)").replace("_in", " (taking)").replace("_", " ")
    title = f"{kind} at {_clock(_num(t, 'started_at'))}: {_seconds(total)}"
    if _str(t, "outcome"):
        title += f", {_str(t, 'outcome')}"
    return {"available": bool(phases), "note": "" if phases else NA, "title": title, "phases": phases}


# --------------------------------------------------------------------------- the whole page


def build(snapshot: dict[str, Any], now: float | None = None) -> dict[str, Any]:
    """The view model of one feed snapshot (see the module docstring)."""
    now = time.time() if now is None else now
    st = _get(snapshot, "status", kind=dict)
    fetched = _num(snapshot, "fetched_at")
    daemon = {"ok": st is not None, "message": "" if st is not None else f"daemon not answering: {_str(snapshot, 'error') or 'unknown error'}",
              "fetched_at": fetched, "fetched": _clock(fetched)}
    schema = _get(st, "schema")
    if st is not None and schema != SCHEMA:
        daemon = {**daemon, "ok": False, "message": f"the daemon's status document has schema {schema!r}; this console reads schema {SCHEMA}"}
        st = None
    if st is None:
        return {"view": VIEW_VERSION, "daemon": daemon, "cluster": "", "local": "",
                "summary": {"active": None, "text": daemon["message"], "detail": "", "code": None, "tone": "bad"},
                "nodes": [], "sections": [], "decisions": {"available": False, "note": NA, "rows": []},
                "timeline": {"available": False, "note": NA, "title": "", "phases": []}}
    intent = _get(st, "intent", kind=dict)
    # This node first, then the peer.
    records = sorted((n for n in _list(st, "nodes") if isinstance(n, dict) and _str(n, "name")), key=lambda n: not _bool(n, "self"))
    not_active = [str(x) for x in _list(st, "not_active_because")]
    active = _str(st, "active_node")
    nodes = [_node_card(r, intent, not_active, active) for r in records]
    why = _str(st, "active_why")
    phase = _str(st, "phase")
    code = _str(st, "decision", "code")
    sentence = _str(st, "decision", "sentence") or _str(st, "verdict") or ""
    text = (f"{active} is active" if active else "no node is active") + (f": {why}" if why else f": {sentence}" if sentence else "")
    blocked = _str(st, "block", "detail")
    tone = "bad" if phase in BAD_PHASES or blocked else "ok" if active else "warn"
    return {"view": VIEW_VERSION, "daemon": daemon, "cluster": _str(st, "cluster") or "", "local": nodes[0]["name"] if nodes else "",
            "summary": {"active": active, "text": text, "detail": sentence if why else "", "code": code, "tone": tone,
                        "blocked": blocked or ""},
            "nodes": nodes,
            "sections": [_drbd_section(st), _gateway_section(st, records), _links_section(st),
                         _fencing_section(st), _intent_section(st, intent), _failcount_section(records)],
            "decisions": _decisions(_get(snapshot, "history"), _str(snapshot, "history_error")),
            "timeline": _timeline(_get(snapshot, "history"))}
