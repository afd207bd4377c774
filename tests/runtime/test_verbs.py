"""Every clevervm verb through the real CLI against running daemons on the lab (behaviour and JSON)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from clever_cluster.sim.harness import wait_for
from clever_cluster.sim.nodelab.lab import NodeLab

from .cluster import OVERRIDES, after_decisions, cli_json, holds_all, other, wait_active, wait_code

pytestmark = [pytest.mark.root, pytest.mark.slow]


def vm_notes(n: object) -> list[str]:
    runs = cli_json(n, "status")["resources"]["history"]  # type: ignore[arg-type]
    return [p["detail"] for r in runs for p in r["phases"] if p["step"] == "vms"]


def test_the_operator_verbs(make_nodelab: Callable[..., NodeLab]) -> None:
    lab = make_nodelab(overrides=OVERRIDES)
    active = wait_active(lab)
    standby = other(lab, active)
    wait_code(standby, "no_action_secondary")

    # start/stop act on this node's VMs directly, and are refused on the standby.
    r = standby.cli("stop")
    assert r.returncode == 1 and "not the active node" in r.stderr and "forcestop" in r.stderr
    got = cli_json(active, "stop")
    assert "restores them again" in got["next"] and got["run"]["outcome"] == "succeeded"
    # The daemon brings them back (restoring the images `stop` wrote), not as a failure.
    wait_for(lambda: all(active.vm_states()[v] for v in ("plc1", "plc2")), 30, "VMs brought back", interval=0.1)
    assert any(e.get("CLEVER_REASON") == "vm_brought_back" for e in active.journal_entries())
    assert cli_json(active, "status")["nodes"][0]["fail_counts"] == {}
    got = cli_json(active, "start")
    assert got["run"]["outcome"] == "succeeded" and "already running" in got["run"]["phases"][-1]["detail"]

    # forcestop/forcestart set the cluster-wide target role, from either node.
    assert "saves the VMs and keeps them stopped" in cli_json(standby, "forcestop")["next"]
    wait_for(lambda: not any(active.vm_states()[v] for v in ("plc1", "plc2")), 30, "VMs saved", interval=0.1)
    after_decisions(active, 20)
    st = cli_json(active, "status")
    assert not any(active.vm_states()[v] for v in ("plc1", "plc2")) and st["intent"]["target_role"] == "stopped"
    assert all(v["save_image"] is not None and v["save_image"]["origin"] == "forcestop" for v in st["vms"]), st["vms"]
    assert st["filesystem"]["mounted"] and st["ip"]["present"]  # storage and IP stay with the active node
    cli_json(active, "forcestart")
    wait_for(lambda: all(active.vm_states()[v] for v in ("plc1", "plc2")), 30, "VMs restored", interval=0.1)
    assert any("plc1: restored from its save image" in d for d in vm_notes(active))

    # cleanup clears fail counts on both nodes (replicated intent).
    got = cli_json(standby, "cleanup", "plc1")
    assert "plc1" in got["next"] and got["intent"]["version"] >= 1
    r = standby.cli("cleanup", "nosuchvm")
    assert r.returncode == 1 and "not a managed VM" in r.stderr

    # standby moves the resources by handover; unstandby lets the node run them again.
    assert "move to" in cli_json(standby, "standby", active.name)["next"]
    wait_for(lambda: holds_all(lab, standby.name), 60, "the resources moved off the node in standby", interval=0.1)
    new_active = wait_active(lab)
    assert new_active is standby
    assert active.name in cli_json(active, "status")["intent"]["standby"]
    assert "stickiness" in cli_json(active, "unstandby")["next"]
    active, standby = standby, active

    # migrate on the standby bans it and says that nothing moves; unmigrate lifts it.
    got = cli_json(standby, "migrate", "--lifetime", "10m")
    assert "nothing moves" in got["next"]
    ban = cli_json(active, "status")["intent"]["bans"]
    assert ban[0]["node"] == standby.name and 0 < ban[0]["remaining_seconds"] <= 600
    assert cli_json(standby, "why")["not_active_because"]
    cli_json(active, "unmigrate")
    assert cli_json(standby, "unmigrate", ok=False) is None  # nothing banned any more: refused

    # fence and confirm-fenced are refused while the peer is heard (nothing recorded).
    r = active.cli("fence", standby.name)
    assert r.returncode == 1 and "is heard" in r.stderr
    r = active.cli("fence", active.name)
    assert r.returncode == 1 and "not this node" in r.stderr
    r = active.cli("confirm-fenced", standby.name)
    assert r.returncode == 1 and "is not lost" in r.stderr
    r = active.cli("confirm-fenced", "nodeX")
    assert r.returncode == 1 and "not the peer's" in r.stderr
    assert cli_json(active, "status")["fencing"]["records"] == []

    # unblock says what it checked; split-brain shows the evidence.
    got = cli_json(active, "unblock")
    assert got["checked"] == ["no block on this node"] and got["blocked"] is None
    sb = cli_json(active, "split-brain")
    assert sb["split_brain"] is False and sb["this_node"]["node"] == active.name and sb["peer"]["epoch"] is not None
    r = active.cli("split-brain", "--resolve", "--victim", standby.name, "--yes", standby.name)
    assert r.returncode == 1 and "no split brain" in r.stderr

    # check: every area answers; the cluster's own parts pass in the lab.
    chk = cli_json(active, "check", ok=False)
    areas = {ln["area"] for ln in chk["lines"]}
    assert {"config", "heartbeat", "gateway", "fencing", "drbd", "libvirt", "save space", "cluster stack"} <= areas
    bad = [ln for ln in chk["lines"] if ln["severity"] == "fail" and ln["area"] in ("config", "heartbeat", "gateway", "fencing", "drbd")]
    # The lab fences by one BMC per node only: check must say that a power loss freezes the service.
    redundancy = [ln for ln in bad if ln["text"].startswith("fence redundancy none")]
    assert len(redundancy) == 1 and "add a PDU level" in redundancy[0]["text"], bad
    assert [ln for ln in bad if ln not in redundancy] == [], bad
    assert chk["predicted_failover"]["worst_case_seconds"] > 0

    # why and history in plain text too.
    assert "reason no_action_primary" in active.cli("why").stdout
    hist = active.cli("history").stdout
    assert "Timeline handover_out" in hist or "Timeline handover_in" in hist
    lab.check()
