"""The view model: built defensively from whatever the daemon's status holds."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from clever_cluster.daemon.console import view

from .conftest import HISTORY, STATUS

NOW = 1_800_000_000.0


def snap(status: Any, **kw: Any) -> dict[str, Any]:
    return {"seq": 1, "fetched_at": NOW, "status": status, "error": None, "history": None, "history_error": None, **kw}


def section(v: dict[str, Any], sid: str) -> dict[str, Any]:
    return next(s for s in v["sections"] if s["id"] == sid)


def test_daemon_down() -> None:
    v = view.build(snap(None, error="daemon not running (no control socket at /run/x)"), NOW)
    assert not v["daemon"]["ok"] and "no control socket" in v["daemon"]["message"]
    assert v["nodes"] == [] and v["summary"]["active"] is None and v["summary"]["tone"] == "bad"


def test_the_lab_daemons_document() -> None:
    """What node1's daemon answered on the two-node lab: every part the page draws is read, none is "not available"."""
    v = view.build(snap(STATUS, history=HISTORY), NOW)
    assert v["daemon"]["ok"] and v["cluster"] == "labcluster" and v["local"] == "node1"
    assert v["summary"]["active"] == "node1" and v["summary"]["code"] == "no_action_primary" and v["summary"]["tone"] == "ok"
    assert v["summary"]["text"].startswith("node1 is active: this node holds DRBD Primary, the filesystem, the floating IP, VM plc1")
    n1, n2 = v["nodes"]
    assert (n1["name"], n1["phase"], n1["active"], n1["state"]) == ("node1", "PRIMARY", True, "online (this console's node)")
    assert (n2["name"], n2["phase"], n2["active"], n2["state"]) == ("node2", "SECONDARY", False, "online")
    assert ["DRBD", "Primary / UpToDate", "ok"] in n1["rows"] and ["VM plc1", "running", "ok"] in n1["rows"]
    assert ["DRBD", "Secondary / UpToDate", "ok"] in n2["rows"] and ["VM plc2", "shutoff", "muted"] in n2["rows"]
    assert ["floating IP", "no", "muted"] in n2["rows"] and ["gateway score", "1", "ok"] in n2["rows"]
    for s in v["sections"]:
        assert s["available"], s["id"]
    drbd = {r[0]: r[1:] for r in section(v, "drbd")["rows"]}
    assert drbd["connection"] == ["Connected", "ok"] and drbd["disks"] == ["UpToDate / UpToDate", "ok"]
    assert drbd["filesystem"][0].startswith("/var/lib/lab/node1/fs/mnt: mounted, 15.0 KiB of 25.2 MiB used")
    assert [r[0] for r in section(v, "links")["rows"]] == ["hb0", "hb1"] and section(v, "links")["rows"][0][1].startswith("up, loss in 0.0%")
    assert section(v, "gateway")["rows"][0] == ["node1", "score 1 of 1", "ok"]
    assert ["192.168.100.1", "reachable, 0.1 ms", "ok"] in section(v, "gateway")["rows"]
    fen = {r[0]: r[1:] for r in section(v, "fencing")["rows"]}
    assert fen["ready"][1] == "ok" and fen["redundancy"][1] == "bad"  # one BMC level: grade "none", as clevervm check fails it
    assert fen["level 1: bmc-node2"] == ["session ok, chassis status byte0=0x01; peer power on", "ok"]
    intent = {r[0]: r[1:] for r in section(v, "intent")["rows"]}
    assert intent["replicated"] == ["version 0: acknowledged by the peer", "ok"] and "settings" not in intent
    assert section(v, "failcounts")["rows"] == [["all VMs", "no failures", "ok"]]
    assert v["decisions"]["rows"][0]["code"] == HISTORY["decisions"][-1]["code"]
    tl = v["timeline"]
    assert tl["title"].startswith("cold start at ") and tl["title"].endswith(": 2.4 s, active here")
    assert [p["name"] for p in tl["phases"]] == ["acknowledged → promote_started", "promote_started → active"]


def test_another_schema_is_not_guessed_at() -> None:
    v = view.build(snap({**STATUS, "schema": 2}), NOW)
    assert not v["daemon"]["ok"] and "schema 2" in v["daemon"]["message"] and v["nodes"] == []
    assert not view.build(snap({k: x for k, x in STATUS.items() if k != "schema"}), NOW)["daemon"]["ok"]


def test_bans_standby_and_a_peer_that_is_not_heard() -> None:
    st = copy.deepcopy(STATUS)
    st["intent"]["bans"] = [{"node": "node2", "until": NOW + 90, "remaining_seconds": 90.0, "active": True},
                            {"node": "node1", "until": NOW - 5, "remaining_seconds": 0.0, "active": False}]
    st["intent"]["standby"] = ["node2"]
    v = view.build(snap(st), NOW)
    n1, n2 = v["nodes"]
    assert [b["text"] for b in n2["badges"]] == ["banned for 90.0 s", "standby"] and n1["badges"] == []  # node1's ban has expired
    intent = {r[0]: r[1] for r in section(v, "intent")["rows"]}
    assert intent["bans"] == "node2 (90.0 s left)" and intent["standby"] == "node2"
    st["nodes"][1].update(online=False, state="lost", silent_for_seconds=3.2)
    n2 = view.build(snap(st), NOW)["nodes"][1]
    assert n2["state"] == "offline (silent 3.2 s)" and n2["tone"] == "bad" and n2["rows"] == [] and n2["phase"] == "?"
    st["nodes"][1].update(online=True, state="incompatible")  # heard, but its report cannot be read here
    n2 = view.build(snap(st), NOW)["nodes"][1]
    assert (n2["state"], n2["tone"]) == ("incompatible", "warn") and n2["rows"]


def schema1(**over: Any) -> dict[str, Any]:
    """A status document in the running daemon's shape (daemon/status.py, schema 1), with a resync, bans and a settings mismatch."""
    doc: dict[str, Any] = {
        "schema": 1, "cluster": "c", "node": "node2", "peer": "node1", "phase": "PRIMARY", "verdict": "node2: active",
        "decision": {"code": "no_action_primary", "phase": "PRIMARY", "sentence": "active with everything running"},
        "active_node": "node2", "active_why": "this node holds DRBD Primary, the filesystem, the floating IP, VM plc1",
        "nodes": [
            {"name": "node1", "self": False, "online": True, "state": "alive", "phase": "SECONDARY", "epoch": "4@node2", "eligible": True,
             "drbd": {"role": "Secondary", "disk": "UpToDate"}, "mounted": False, "ip": False, "vms": {"plc1": "shutoff"},
             "gateway_score": 1, "fail_counts": {"plc1": 2}, "silent_for_seconds": 0.1},
            {"name": "node2", "self": True, "online": True, "state": "alive", "phase": "PRIMARY", "epoch": "4@node2", "eligible": True,
             "drbd": {"role": "Primary", "disk": "UpToDate", "peer_disk": "UpToDate", "connection": "Connected"},
             "mounted": True, "ip": True, "vms": {"plc1": "running", "plc2": "running"}, "gateway_score": 2, "fail_counts": {}},
        ],
        "not_active_because": [],
        "drbd": {"resource": "r0", "role": "Primary", "peer_role": "Secondary", "connection": "SyncSource", "disk": "UpToDate",
                 "peer_disk": "Inconsistent", "replication": "SyncSource", "resync_percent": 42.0, "out_of_sync_kib": 3072,
                 "suspended": [], "split_brain": False, "config_safe": True, "config_issues": []},
        "filesystem": {"mountpoint": "/srv/vms", "mounted": True,
                       "usage": {"size_bytes": 100 * 2**30, "used_bytes": 45 * 2**30, "free_bytes": 55 * 2**30, "percent": 45.0}},
        "gateway": {"score": 2, "max_score": 2, "targets": [{"target": "192.0.2.1", "reachable": True, "rtt_ms": 0.52},
                                                            {"target": "192.0.2.2", "reachable": False}]},
        "heartbeat": {"name": "node1", "state": "alive", "links": [{"name": "bond0", "bound": True, "up": True, "loss_in": 0.0,
                                                                    "loss_out": 0.0, "rtt_smoothed_ms": 0.2}]},
        "fencing": {"redundancy": {"grade": "degraded", "can_fence_now": True, "text": "one level: a BMC that loses power with its node stops fencing"},
                    "devices": [{"level": 1, "name": "bmc-node1", "ok": True, "message": "power on, identity confirmed", "power": "on",
                                 "usable": True}],
                    "attempt": None},
        "intent": {"version": 7, "target_role": "started", "maintenance": False, "standby": [],
                   "bans": [{"node": "node1", "until": NOW + 30, "remaining_seconds": 30.0, "active": True},
                            {"node": "node2", "until": NOW - 1, "remaining_seconds": 0.0, "active": False}],
                   "acknowledged_by_peer": False},
        "settings": {"this_node": "aa", "peer": "bb", "mismatch": True},
        "predicted_failover": {"text": "worst case 95 s: detect 1.1 s + ..."},
    }
    doc.update(over)
    return doc


def test_schema1_document_nodes_sections_decisions_and_timeline() -> None:
    history = {"decisions": [{"wall": NOW - 20, "code": "handover_promoting", "sentence": "promote"},
                             {"wall": NOW - 10, "code": "no_action_primary", "sentence": "all running"}],
               "timelines": [{"kind": "handover_in", "outcome": "active here", "started_at": NOW - 30, "total_seconds": 4.0,
                              "phases": [{"from": "acknowledged", "to": "promote_started", "seconds": 0.5},
                                         {"from": "promote_started", "to": "active", "seconds": 3.5}]}]}
    v = view.build(snap(schema1(), history=history), NOW)
    assert v["local"] == "node2" and [n["name"] for n in v["nodes"]] == ["node2", "node1"]  # the console's own node first
    assert v["summary"]["active"] == "node2" and v["summary"]["code"] == "no_action_primary"
    assert v["summary"]["text"] == "node2 is active: this node holds DRBD Primary, the filesystem, the floating IP, VM plc1"
    assert v["summary"]["detail"] == "active with everything running" and v["summary"]["tone"] == "ok"
    n2, n1 = v["nodes"]
    assert (n2["active"], n1["active"]) == (True, False) and n2["local"] and not n1["local"]
    assert ["VM plc1", "running", "ok"] in n2["rows"] and ["floating IP", "up", "ok"] in n2["rows"]
    assert ["VM plc1", "shutoff (2 failures)", "bad"] in n1["rows"] and ["epoch", "4@node2", "muted"] in n1["rows"]
    assert [b["text"] for b in n1["badges"]] == ["banned for 30.0 s"] and n2["badges"] == []
    drbd = section(v, "drbd")
    assert drbd["progress"] == {"label": "resync", "fraction": 0.42}
    assert ["out of sync", "3.0 MiB", "warn"] in drbd["rows"] and ["disks", "UpToDate / Inconsistent", "warn"] in drbd["rows"]
    assert ["filesystem", "/srv/vms: mounted, 45.0 GiB of 100.0 GiB used (45%), 55.0 GiB free", "ok"] in drbd["rows"]
    gw = section(v, "gateway")["rows"]
    assert gw[:2] == [["node2", "score 2 of 2", "ok"], ["node1", "score 1 of 2", "ok"]]
    assert ["192.0.2.1", "reachable, 0.5 ms", "ok"] in gw and ["192.0.2.2", "unreachable", "bad"] in gw
    fen = section(v, "fencing")["rows"]
    assert fen[0] == ["ready", "yes: the peer can be fenced now", "ok"] and fen[1][2] == "warn"
    assert ["level 1: bmc-node1", "power on, identity confirmed; peer power on", "ok"] in fen
    assert fen[-1][0] == "predicted failover"
    intent = {r[0]: r[1:] for r in section(v, "intent")["rows"]}
    assert intent["bans"] == ["node1 (30.0 s left)", "warn"] and intent["replicated"][1] == "warn"
    assert intent["settings"][1] == "bad"
    assert section(v, "failcounts")["rows"] == [["node1: plc1", "2", "bad"]]
    assert [r["code"] for r in v["decisions"]["rows"]] == ["no_action_primary", "handover_promoting"]  # newest first
    tl = v["timeline"]
    assert tl["title"].startswith("handover (taking) at ") and tl["title"].endswith(": 4.0 s, active here")
    assert [(p["name"], p["fraction"]) for p in tl["phases"]] == [("acknowledged → promote_started", 0.125), ("promote_started → active", 0.875)]


def test_schema1_active_node_is_the_daemons_word() -> None:
    """Where the daemon names the active node (or none), its word counts, not the phases."""
    v = view.build(snap(schema1(active_node=None, active_why="both nodes report resources: see the decision",
                                block={"cause": "split_brain", "detail": "DRBD reports split brain"})), NOW)
    assert v["summary"]["active"] is None and all(n["active"] is False for n in v["nodes"])
    assert v["summary"]["text"] == "no node is active: both nodes report resources: see the decision"
    assert v["summary"]["tone"] == "bad" and v["summary"]["blocked"] == "DRBD reports split brain"


def test_schema1_peer_not_heard_shows_no_stale_resources() -> None:
    doc = schema1()
    doc["nodes"][0].update(online=False, state="lost", silent_for_seconds=4.0)
    v = view.build(snap(doc), NOW)
    n1 = v["nodes"][1]
    assert n1["state"] == "offline (silent 4.0 s)" and n1["rows"] == [] and n1["phase"] == "?"


@pytest.mark.parametrize("garbage", [
    {}, {"node": 5}, {"heartbeat": "x"}, {"heartbeat": {"links": [1, None, {"up": "yes"}]}},
    {"drbd": [], "fencing": {"devices": "x"}, "nodes": [None, {"name": 3}]},
    {"intent": {"bans": [{"until": "soon", "remaining_seconds": "x"}], "standby": [3]}, "nodes": [{"name": "a", "vms": [1], "fail_counts": 2}]},
])
def test_garbage_never_breaks_the_view(garbage: dict[str, Any]) -> None:
    v = view.build(snap({"schema": 1, **garbage}), NOW)
    json.dumps(v)
    assert v["daemon"]["ok"] and all(s["note"] == "not available" for s in v["sections"] if not s["rows"])


json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=5),
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from(
                               ["node", "peer", "phase", "heartbeat", "links", "nodes", "self", "online", "vms", "drbd", "intent",
                                "bans", "standby", "state", "name", "fencing", "redundancy", "devices", "decisions", "timelines", "phases",
                                "seconds", "until", "fail_counts", "gateway", "targets", "active_node", "filesystem", "usage"]),
                               inner, max_size=4),
                           max_leaves=25)


@settings(max_examples=300, deadline=None)
@given(status=json_values, history=json_values)
def test_any_json_document_gives_a_drawable_view(status: Any, history: Any) -> None:
    v = view.build(snap({"schema": 1, **status} if isinstance(status, dict) else status, history=history), NOW)
    json.dumps(v)
    for s in v["sections"]:
        assert s["available"] == bool(s["rows"]) and (s["rows"] or s["note"])
