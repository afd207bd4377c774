"""`clevervm status` in plain text, rendered from status documents (docs/status-schema.md).

The complete document is a real one, recorded from the two-node lab (node1
active); the tests change parts of it to show every item of issue 8's list,
and null or garble each part in turn: the renderer must never raise.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from clever_cluster.daemon import clilocal, clirender

DOC = json.loads((Path(__file__).parent / "data" / "status-lab-active.json").read_text())


def paths(obj: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """Every key path (and list index) of a JSON document."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield (*prefix, k)
            yield from paths(v, (*prefix, k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield (*prefix, i)
            yield from paths(v, (*prefix, i))


def replaced(doc: dict[str, Any], path: tuple[Any, ...], value: Any) -> dict[str, Any]:
    out = copy.deepcopy(doc)
    obj: Any = out
    for k in path[:-1]:
        obj = obj[k]
    obj[path[-1]] = value
    return out


def test_the_recorded_document_shows_every_item_of_the_list() -> None:
    text = clirender.render_status(DOC)
    for want in [
        "last updated 20",                                   # last updated
        "Active node: node1 (this node holds DRBD Primary",  # active node and why
        "Node node1: online  phase PRIMARY", "Node node2: online  phase SECONDARY",  # both nodes, phase
        "res_drbd Primary  res_Filesystem Started  res_IPaddr Started  plc1 running  plc2 running",  # resources per node
        "res_drbd Secondary  res_Filesystem Stopped  res_IPaddr Stopped  plc1 shutoff  plc2 shutoff",
        "Inactive resources: none", "Fail counts: node1 none; node2 none",
        "DRBD storage: r0 Connected Primary/Secondary UpToDate/UpToDate",  # the DRBD line
        "DRBD settings: safe", "ext4 on /dev/loop0: mounted here  size 25.2M used 15K free 23.0M 0%",  # filesystem usage
        "Name: plc1 State: running Managed save: no",
        "gateway score 1/1",                                # gateway score per node
        "link hb0  up   heard", "loss in 0.0% out 0.0%, rtt 4.01 ms",  # links with loss and RTT
        "Fencing: can fence now; redundancy none:", "level 1 bmc-node2 (ipmi 192.168.100.22:623 user admin): ok",
        "Bans and standby: none", "Intent: version 0 (target started): acknowledged by node2",
        "Settings: fingerprint 6570ea2693631cda, identical on both nodes",
        "Epoch: 1@node1 (peer's last seen 1@node1)", "Predicted failover: worst case 303 s",
    ]:
        assert want in text, f"{want!r} missing from:\n{text}"
    assert "BLOCKED" not in text and "UNSAFE" not in text and "NOT YET ACKNOWLEDGED" not in text
    unmounted = replaced(DOC, ("filesystem", "mounted"), False)
    assert "Name: plc1 State: running Managed save: unknown (filesystem not mounted here)" in clirender.render_status(unmounted)


def test_degraded_parts_are_shown_as_such() -> None:
    doc = copy.deepcopy(DOC)
    peer = doc["nodes"][1]
    peer.update(online=False, state="lost", fail_counts={"plc1": 2})
    doc["heartbeat"]["state"], doc["heartbeat"]["silent_for"] = "lost", 12.5
    doc["heartbeat"]["intent"]["acknowledged"] = False
    doc["drbd"].update(connection="SyncSource", resync_percent=42.5, out_of_sync_kib=2048, config_safe=False,
                       config_issues=["net protocol is A, must be C"])
    doc["settings"].update(mismatch=True, peer="0123456789abcdef")
    doc["intent"].update(bans=[{"node": "node1", "until": 1.0, "remaining_seconds": 3720.0, "active": True, "reason": ""}],
                         standby=["node2"])
    doc["block"] = {"cause": "split_brain", "detail": "DRBD reports split brain"}
    doc["vms"][0]["save_image"] = {"origin": "handover"}
    doc["nodes"][0]["vms"]["plc2"] = "shutoff"
    doc["epoch"]["behind"] = True
    text = clirender.render_status(doc)
    for want in [
        "Node node2: OFFLINE (lost)  phase when last heard SECONDARY",
        "  as last heard: res_drbd Secondary  res_Filesystem Stopped",
        "Inactive resources: plc2",  # running nowhere that is online
        "Fail counts: node1 none; node2 plc1=2",
        "SyncSource Primary/Secondary UpToDate/UpToDate (Established) sync 42.5% done out-of-sync 2048 KiB",
        "UNSAFE DRBD SETTINGS: net protocol is A, must be C",
        "SETTINGS DIFFER: this node 6570ea2693631cda, peer 0123456789abcdef",
        "Ban: node1 (1h 2m 0s left)", "Standby: node2 (until unstandby)",
        "NOT YET ACKNOWLEDGED by node2", "Peer node2: LOST (nothing valid on any link for 12.5s)",
        "BLOCKED: DRBD reports split brain", "BEHIND the peer's", "Managed save: yes (handover)",
    ]:
        assert want in text, f"{want!r} missing from:\n{text}"


ALL_PATHS = list(paths(DOC))


@pytest.mark.parametrize("value", [None, "garbled", 7, [], {}])
def test_any_part_null_or_garbled_never_raises(value: Any) -> None:
    for path in ALL_PATHS:
        text = clirender.render_status(replaced(DOC, path, value))
        assert text.startswith("Cluster "), path
        if value is None:  # a null part is a normal degraded document: drawn as "-", not caught as malformed
            assert "cannot show" not in text, (path, text)


def test_a_document_with_nothing_in_it() -> None:
    text = clirender.render_status({"schema": 1})
    assert "Cluster -, node - (peer -)" in text and "Decision: none yet" in text and "Fencing: not known" in text


def test_the_local_view_says_the_daemon_is_not_running() -> None:
    st = {"daemon_running": False, "node": "node1", "peer": "node2",
          "drbd": {"resource": "r0", "role": "Primary", "cstate": "Connected", "dstate": "UpToDate/UpToDate"},
          "filesystem": {"mountpoint": "/srv", "mounted": True, "fstype": "ext4",
                         "usage": {"size_bytes": 4 << 30, "used_bytes": 1 << 30, "free_bytes": 3 << 30, "percent": 25.0}},
          "ip": {"address": "192.0.2.5/24", "present": True},
          "libvirt": {"vms": {"plc1": "running"}, "save_images": {"plc1": False}}}
    text = clilocal.render_local(st)
    assert text.splitlines()[0].startswith("*** daemon not running")
    assert "DRBD r0: role Primary, connection Connected, disks UpToDate/UpToDate" in text
    assert "Filesystem /srv ext4: mounted here  size 4.0G used 1.0G free 3.0G 25%" in text
    assert "Floating IP 192.0.2.5/24: here" in text and "Name: plc1 State: running Managed save: no" in text
    for path in list(paths(st)):
        assert clilocal.render_local(replaced(st, path, None)).startswith("*** daemon not running"), path


WHY = {"schema": 1, "node": "node2", "decision": {"code": "no_action_secondary", "phase": "SECONDARY", "sentence": "standby",
                                                  "since": 1.0, "meaning": "Standby; the peer is active."},
       "active_node": "node1", "active_why": "node1 reports phase PRIMARY", "not_active_because": ["node1 is active"],
       "mattered": ["peer"], "inputs": {"peer": {"links_silent_seconds": {"hb0": 0.007, "hb1": 0.008}, "phase": None,
                                                 "heard_this_boot": True, "fence_failures": 0, "standby": []}}}


def test_why_shows_inputs_without_python_reprs() -> None:
    text = clirender.render_why(WHY)
    assert "reason no_action_secondary" in text and "  - node1 is active" in text
    assert "links_silent_seconds: hb0 0.007, hb1 0.008" in text and "phase: -" in text and "heard_this_boot: yes" in text
    assert "standby: none" in text and "{" not in text and "None" not in text
    for path in list(paths(WHY)):
        for value in (None, "garbled", 3):
            clirender.render_why(replaced(WHY, path, value))  # never raises
    assert clirender.render_why({}).startswith("No decision yet")


HISTORY = {"schema": 1, "node": "node1",
           "decisions": [{"wall": 1.0, "phase": "FENCING", "code": "peer_lost_fencing", "sentence": "fencing node2"}],
           "timelines": [{"kind": "failover", "started_at": 1.0, "outcome": "active here", "total_seconds": 10.37,
                          "phases": [{"from": "peer_lost", "to": "fence_started", "seconds": 2.102}],
                          "sequences": [{"kind": "start", "outcome": "succeeded",
                                         "steps": [{"action": "start", "step": "drbd", "seconds": 3.4}]}]}]}
CHECK = {"ok": False, "lines": [{"severity": "fail", "area": "cluster stack", "text": "corosync runs"}],
         "predicted_failover": {"text": "worst case 303 s"}}


def test_history_and_check_render_and_never_raise() -> None:
    text = clirender.render_history(HISTORY)
    assert "FENCING     peer_lost_fencing: fencing node2" in text and "Timeline failover started" in text
    assert "active here, 10.37 s" in text and "peer_lost -> fence_started: 2.102 s" in text
    assert "start sequence succeeded: start drbd 3.40s" in text
    text = clirender.render_check(CHECK)
    assert "[FAIL] cluster stack: corosync runs" in text and text.endswith("check FAILED: fix the FAIL lines")
    for doc, render in ((HISTORY, clirender.render_history), (CHECK, clirender.render_check)):
        for path in list(paths(doc)):
            for value in (None, "garbled", 3, {}):
                render(replaced(doc, path, value))  # never raises
