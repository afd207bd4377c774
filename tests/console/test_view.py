"""The view model: built defensively from whatever the daemon's status holds."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from clever_cluster.daemon.console import view

from .conftest import STATUS

NOW = 1_800_000_000.0


def snap(status: Any, **kw: Any) -> dict[str, Any]:
    return {"seq": 1, "fetched_at": NOW, "status": status, "error": None, "history": None, "history_error": None, **kw}


def section(v: dict[str, Any], sid: str) -> dict[str, Any]:
    return next(s for s in v["sections"] if s["id"] == sid)


def test_daemon_down() -> None:
    v = view.build(snap(None, error="daemon not running (no control socket at /run/x)"), NOW)
    assert not v["daemon"]["ok"] and "no control socket" in v["daemon"]["message"]
    assert v["nodes"] == [] and v["summary"]["active"] is None and v["summary"]["tone"] == "bad"


def test_skeleton_status_both_nodes_and_missing_sections_said_so() -> None:
    """The status of main's daemon today: node, phase, verdict and the heartbeat part only."""
    st = {"node": "node1", "peer": "node2", "cluster": "c", "phase": "STARTING", "verdict": "node1: starting, waiting to hear node2",
          "heartbeat": {"name": "node2", "state": "unseen", "links": [], "intent": {"record": {"version": 0}}}}
    v = view.build(snap(st), NOW)
    assert [(n["name"], n["phase"]) for n in v["nodes"]] == [("node1", "STARTING"), ("node2", "?")]
    assert v["nodes"][1]["state"] == "not heard yet"
    assert v["summary"]["active"] is None and v["summary"]["text"].startswith("no node is active: node1: starting")
    for sid in ("drbd", "gateway", "fencing"):
        assert section(v, sid) == {"id": sid, "title": section(v, sid)["title"], "available": False, "note": "not available",
                                   "rows": [], "progress": None}
    assert v["decisions"]["note"] == "not available" and not v["timeline"]["available"]


def test_active_node_links_intent_and_peer_resources() -> None:
    st = copy.deepcopy(STATUS)
    st["heartbeat"]["intent"]["record"]["bans"] = [{"node": "node2", "until": NOW + 90}, {"node": "node1", "until": NOW - 5}]
    st["heartbeat"]["intent"]["record"]["standby"] = ["node2"]
    v = view.build(snap(st), NOW)
    assert v["summary"] == {"active": "node1", "text": "node1 is active: node1: active, all running", "code": None, "tone": "ok"}
    n1, n2 = v["nodes"]
    assert n1["active"] is True and n2["active"] is False and n2["state"] == "online" and n2["phase"] == "SECONDARY"
    assert ["DRBD", "Secondary / UpToDate", "ok"] in n2["rows"] and ["gateway score", "2", "ok"] in n2["rows"]
    assert [b["text"] for b in n2["badges"]] == ["banned for 90.0 s", "standby"]
    assert n1["badges"] == []  # node1's ban has expired
    links = section(v, "links")["rows"]
    assert links[0] == ["hb0", "up, loss in 0.0% out 1.0%, rtt 0.40 ms", "ok"] and links[1][2] == "bad"
    intent = dict((r[0], r[1]) for r in section(v, "intent")["rows"])
    assert intent["bans"] == "node2 (90.0 s left)" and intent["standby"] == "node2"


def test_a_lost_peer_is_offline_and_its_old_report_is_not_shown() -> None:
    st = copy.deepcopy(STATUS)
    st["heartbeat"]["state"], st["heartbeat"]["silent_for"] = "lost", 3.2
    v = view.build(snap(st), NOW)
    n2 = v["nodes"][1]
    assert n2["state"] == "offline (silent 3.2 s)" and n2["tone"] == "bad" and n2["rows"] == [] and n2["phase"] == "?"


def test_full_document_drbd_progress_fencing_decisions_and_timeline() -> None:
    st = copy.deepcopy(STATUS)
    st["drbd"] = {"resource": "r0", "connection": "Connected", "role": "Primary", "peer_role": "Secondary", "disk": "UpToDate",
                  "peer_disk": "Inconsistent", "out_of_sync_bytes": 3 * 2**20, "resync": {"done": 0.42, "eta_seconds": 75}}
    st["fencing"] = {"ready": True, "redundancy": "none: one level", "levels": [{"devices": [{"name": "bmc", "health": "ok"}]}]}
    st["decision"] = {"code": "no_action_primary", "sentence": "active with everything running"}
    history = {"decisions": [{"at": NOW - 20, "code": "handover_promoting", "sentence": "promote"},
                             {"at": NOW - 10, "code": "no_action_primary", "sentence": "all running"}],
               "timelines": [{"kind": "handover", "started_at": NOW - 30, "from": "node2", "to": "node1",
                              "phases": [{"name": "save VMs", "seconds": 1.5}, {"name": "demote", "seconds": 0.5}, {"name": "restore", "seconds": 2.0}]}]}
    v = view.build(snap(st, history=history), NOW)
    drbd = section(v, "drbd")
    assert drbd["progress"] == {"label": "resync, 75.0 s left", "fraction": 0.42}
    assert ["out of sync", "3.0 MiB", "warn"] in drbd["rows"] and ["disks", "UpToDate / Inconsistent", "warn"] in drbd["rows"]
    fen = section(v, "fencing")["rows"]
    assert fen[0] == ["ready", "yes", "ok"] and fen[1] == ["redundancy", "none: one level", "warn"]
    assert v["summary"]["code"] == "no_action_primary" and v["summary"]["text"] == "node1 is active: active with everything running"
    assert [r["code"] for r in v["decisions"]["rows"]] == ["no_action_primary", "handover_promoting"]  # newest first
    tl = v["timeline"]
    assert tl["title"].startswith("handover at ") and tl["title"].endswith(": 4.0 s (node2 → node1)")
    assert [(p["name"], p["fraction"]) for p in tl["phases"]] == [("save VMs", 0.375), ("demote", 0.125), ("restore", 0.5)]


@pytest.mark.parametrize("garbage", [
    {}, {"node": 5}, {"heartbeat": "x"}, {"heartbeat": {"links": [1, None, {"up": "yes"}]}},
    {"drbd": [], "fencing": {"levels": "x"}, "fail_counts": [None]},
    {"heartbeat": {"intent": {"record": {"bans": [{"until": "soon"}], "standby": [3]}}, "report": {"resources": {"vms": [{"name": 1}]}}}},
])
def test_garbage_never_breaks_the_view(garbage: dict[str, Any]) -> None:
    v = view.build(snap(garbage), NOW)
    json.dumps(v)
    assert len(v["nodes"]) == 2


json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=5),
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from(
                               ["node", "peer", "phase", "heartbeat", "links", "report", "resources", "vms", "drbd", "intent", "record",
                                "bans", "standby", "state", "name", "fencing", "levels", "devices", "decisions", "timelines", "phases",
                                "seconds", "until", "fail_count", "gateway", "targets", "resync", "done"]), inner, max_size=4),
                           max_leaves=25)


@settings(max_examples=300, deadline=None)
@given(status=json_values, history=json_values)
def test_any_json_document_gives_a_drawable_view(status: Any, history: Any) -> None:
    v = view.build(snap(status, history=history), NOW)
    json.dumps(v)
    for s in v["sections"]:
        assert s["available"] == bool(s["rows"]) and (s["rows"] or s["note"])
