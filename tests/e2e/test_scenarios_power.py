"""Issue 9 scenarios on the two-node lab with the wired daemon: power, fence devices, daemon restarts and hangs.

Each test brings up one lab (the fixture closes it and proves nothing is
left), injects one fault sequence, asserts what the daemons say (``clevervm
status --json``, the journal capture, alert hooks) and what the parts did
(the transition log, the DRBD simulator, the BMCs' event files), and ends
with ``lab.check()``: never two active, no acknowledged write lost.

Already covered elsewhere (``tests/runtime/``): cold start, active power-off
failover, active daemon SIGKILL adoption, clean stop of the standby,
replication link cut, maintenance.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from clever_cluster.sim.harness import wait_for
from clever_cluster.sim.nodelab.lab import NodeLab
from clever_cluster.sim.nodelab.node import LabNode
from tests.runtime.cluster import (
    OVERRIDES,
    after_decisions,
    cli_json,
    code,
    holds_all,
    journal,
    other,
    role_transitions,
    vm_transitions,
    wait_active,
    wait_code,
)

pytestmark = [pytest.mark.root, pytest.mark.slow]

ALERT_HOOK = """#!/bin/sh
env | grep '^CLEVER_ALERT_' | sort > "{out}/$CLEVER_ALERT_SEQUENCE.env"
"""


def settled(lab: NodeLab) -> tuple[LabNode, LabNode]:
    """The active node and the standby, once both say so."""
    active = wait_active(lab)
    standby = other(lab, active)
    wait_code(standby, "no_action_secondary")
    return active, standby


def records(n: LabNode) -> list[dict[str, Any]]:
    recs: list[dict[str, Any]] = cli_json(n, "status")["fencing"]["records"]
    return recs


def bmc_events(lab: NodeLab, n: LabNode) -> list[str]:
    """What node ``n``'s BMC was asked to do (``power_off``, ``power_on``, ...), from its event file."""
    f = n.dir / "bmc.events"
    return [json.loads(line)["event"] for line in f.read_text().splitlines()] if f.exists() else []


def since(lab: NodeLab, node: str, kind: str, t: float) -> list[Any]:
    return [r.value for r in lab.records() if r.node == node and r.kind == kind and r.t > t]


def add_alert_recorder(lab: NodeLab, n: LabNode) -> Path:
    """An ``[[alerts]]`` hook on ``n`` that writes each event's environment to a file; applied by ``clevervm reload``."""
    out = n.dir / "alerts"
    out.mkdir()
    prog = n.dir / "alert-hook.sh"
    prog.write_text(ALERT_HOOK.format(out=out))
    prog.chmod(0o755)
    with open(n.config, "a") as f:
        f.write(f'\n[[alerts]]\nname = "recorder"\nprogram = "{prog}"\n')
    r = n.cli("reload")
    assert r.returncode == 0, r.stderr
    return out


def alerts(out: Path) -> list[dict[str, str]]:
    got = []
    for p in sorted(out.glob("*.env"), key=lambda p: int(p.stem)):
        got.append(dict(line.split("=", 1) for line in p.read_text().splitlines() if "=" in line))
    return got


def test_standby_power_loss_is_fenced_by_the_active_and_rejoins_after_resync(make_nodelab: Callable[..., NodeLab]) -> None:
    # fencing.after = "off": the test, not the fence, powers the standby back on.
    lab = make_nodelab(overrides={**OVERRIDES, "fencing": {**OVERRIDES["fencing"], "after": "off"}})
    active, standby = settled(lab)
    acked = [active.write()["id"] for _ in range(3)]
    start = lab.mark("power loss of the standby")
    lab.power_off(standby.index)
    # DRBD froze the active's writes and ran fence-peer; the policy fenced the standby through its BMC
    # (which reads it off), the handler answered 7 and the writes go on.
    wait_for(lambda: bool(records(active)) and not active.sim.state()["susp"], 90, "the standby fenced and I/O resumed", interval=0.2)
    rec = records(active)[-1]
    assert rec["kind"] == "device" and rec["devices"] == [f"bmc-{standby.name}"], rec
    assert "fence-peer handler exited 7" in active.sim.log()
    # The BMC already read the machine off: the agent took that as the evidence; nothing powered it back on.
    assert "power_on" not in bmc_events(lab, standby)
    w = active.write(timeout=5)
    assert w["ok"] and w["replicated"] is False
    # The active kept everything: no role, mount or VM transition; no promotion anywhere.
    wait_code(active, {"no_action_primary", "primary_after_fence"}, timeout=30)
    assert holds_all(lab, active.name)
    assert role_transitions(lab, active.name, start) == [] and vm_transitions(lab, active.name, start) == []
    assert not [r for r in lab.records() if r.t > start and r.kind == "mount" and r.node == active.name]
    # Power returns: the standby boots, resyncs what it missed and is the standby again.
    lab.power_on(standby.index)
    wait_code(standby, "no_action_secondary", timeout=90)
    wait_for(lambda: standby.sim.state()["disk"] == "UpToDate" and active.sim.state()["peer_disk"] == "UpToDate", 60,
             "the standby resynced", interval=0.2)
    assert "Primary" not in role_transitions(lab, standby.name, start)
    assert holds_all(lab, active.name) and cli_json(standby, "status")["active_node"] == active.name
    assert active.write(timeout=5)["replicated"] is True and acked
    lab.check()


def test_standby_power_loss_with_its_bmc_freezes_writes_until_the_operator_confirms(make_nodelab: Callable[..., NodeLab]) -> None:
    lab = make_nodelab(overrides=OVERRIDES, bmc_dies_with_node=(1, 2))
    active, standby = settled(lab)
    out = add_alert_recorder(lab, active)
    acked = [active.write()["id"] for _ in range(3)]
    start = lab.mark("power loss of the standby and its BMC")
    lab.power_off(standby.index)
    assert not lab.bmc_alive(standby.index)
    # The fence cannot reach the dead BMC: no record, DRBD keeps the writes frozen (fence-peer cannot answer 7).
    st = wait_code(active, "fence_failed_retrying", timeout=90)
    assert st["drbd"]["suspended"] and st["drbd"]["fence_peer_running"], st["drbd"]
    assert st["fencing"]["records"] == [] and st["fencing"]["failures"] >= 1
    assert holds_all(lab, active.name) and st["phase"] == "FENCING"
    assert active.write(timeout=2)["ok"] is False  # frozen: never acknowledged
    # The human status shows the freeze and why.
    text = active.cli("status").stdout
    assert "SUSPENDED(fencing)" in text and "phase FENCING" in text and f"Peer {standby.name}: LOST" in text, text
    assert "fence attempt" in text and "freezes the service" in text, text
    wait_for(lambda: f"clevervm confirm-fenced {standby.name}" in active.cli("status").stdout, 30, "the way out in the status", interval=0.2)
    # The alert hook ran with the event in its environment.
    wait_for(lambda: any(a.get("CLEVER_ALERT_KIND") == "fence_failing" for a in alerts(out)), 60, "a fence_failing alert", interval=0.2)
    a = next(a for a in alerts(out) if a["CLEVER_ALERT_KIND"] == "fence_failing")
    assert a["CLEVER_ALERT_NODE"] == active.name and a["CLEVER_ALERT_PEER"] == standby.name
    assert a["CLEVER_ALERT_REASON"] == "fence_failed_retrying" and standby.name in a["CLEVER_ALERT_MESSAGE"]
    # The operator checked the standby is off and says so: the record answers the handler (7) and I/O resumes.
    r = active.cli("confirm-fenced", standby.name)
    assert r.returncode == 0, r.stderr
    wait_for(lambda: not active.sim.state()["susp"], 60, "I/O resumed after the operator's confirmation", interval=0.2)
    assert records(active)[-1]["kind"] == "operator"
    assert "fence-peer handler exited 7" in active.sim.log()
    assert active.write(timeout=5)["ok"] and acked
    assert role_transitions(lab, active.name, start) == [] and vm_transitions(lab, active.name, start) == []
    lab.check()


def test_standby_daemon_restarts_while_drbd_is_connected_fence_nobody(make_nodelab: Callable[..., NodeLab]) -> None:
    lab = make_nodelab(overrides=OVERRIDES)
    active, standby = settled(lab)
    start = lab.mark("clevervm daemon-restart on the standby")
    r = standby.cli("daemon-restart")
    assert r.returncode == 0 and "restarting" in r.stdout, r.stderr
    d = standby.daemon
    assert d is not None and d.proc is not None
    wait_for(lambda: not d.alive(), 30, "the standby's daemon to exit for its restart", interval=0.1)
    assert d.proc.returncode == 75  # systemd's RestartForceExitStatus: start it again
    # The active knows it is a restart (announced): no fence while the daemon is away (systemd would restart it).
    wait_code(active, "peer_restarting", timeout=30)
    standby.start_daemon()
    wait_code(standby, "no_action_secondary", timeout=60)
    # The same with a plain SIGTERM (systemctl restart): the standby leaves cleanly, holding nothing.
    standby.stop_daemon()
    wait_code(active, "peer_left", timeout=30)
    standby.start_daemon()
    wait_code(standby, "no_action_secondary", timeout=60)
    wait_code(active, "no_action_primary", timeout=30)
    # Nothing moved, nobody was fenced, DRBD stayed connected and replicating.
    assert records(active) == [] and records(standby) == []
    assert "power_off" not in bmc_events(lab, active)
    assert "power_off" not in bmc_events(lab, standby)
    assert since(lab, active.name, "conn", start) == [] and since(lab, active.name, "susp", start) == []
    assert role_transitions(lab, active.name, start) == [] and role_transitions(lab, standby.name, start) == []
    assert vm_transitions(lab, active.name, start) == [] and holds_all(lab, active.name)
    assert active.write(timeout=5)["replicated"] is True
    lab.check()


def test_clean_reboots_of_standby_then_active_hand_over_and_fence_nobody(make_nodelab: Callable[..., NodeLab]) -> None:
    lab = make_nodelab(overrides=OVERRIDES)
    first, second = settled(lab)
    start = lab.mark("clean reboot of the standby")
    lab.reboot(second.index)
    wait_code(second, "no_action_secondary", timeout=90)
    wait_for(lambda: second.sim.state()["disk"] == "UpToDate", 60, "the standby resynced", interval=0.2)
    assert holds_all(lab, first.name) and role_transitions(lab, first.name, start) == []
    assert vm_transitions(lab, first.name, start) == []
    acked = [first.write()["id"] for _ in range(3)]
    mid = lab.mark("clean reboot of the active")
    lab.reboot(first.index)
    wait_for(lambda: holds_all(lab, second.name), 90, "the resources on the other node", interval=0.2)
    assert wait_active(lab) is second
    wait_code(first, "no_action_secondary", timeout=90)
    # Handover first: the old active was Secondary (and the new one Primary) before its power went off.
    off = min(r.t for r in lab.records() if r.node == first.name and r.kind == "power" and r.t > mid)
    promoted = [r.t for r in lab.records() if r.node == second.name and r.kind == "role" and r.value == "Primary" and r.t > mid]
    demoted = [r.t for r in lab.records() if r.node == first.name and r.kind == "role" and r.value == "Secondary" and r.t > mid]
    assert demoted and promoted and demoted[0] < promoted[0] < off, lab.timeline()
    runs = cli_json(second, "status")["resources"]["history"]
    notes = [p["detail"] for r in runs for p in r["phases"] if p["step"] == "vms" and p["action"] == "start"]
    assert any("plc1: restored from its save image" in d for d in notes), notes
    # Nobody fenced: no record anywhere, no power command to either BMC.
    assert records(first) == [] and records(second) == []
    assert "power_off" not in bmc_events(lab, first) and "power_off" not in bmc_events(lab, second)
    assert second.write(timeout=5)["ok"] and acked
    lab.check()


def test_active_daemon_hang_is_fenced_after_the_grace_and_a_short_hang_is_not(make_nodelab: Callable[..., NodeLab]) -> None:
    # A shorter silent_peer_grace (default 10 s) and a priority delay wide enough to resume a hang inside it.
    lab = make_nodelab(overrides={**OVERRIDES, "heartbeat": {"silent_peer_grace": "3s"},
                                  "fencing": {"priority_delay": "8s", "random_delay": "0.5s"}})
    hung, survivor = settled(lab)
    acked = [hung.write()["id"] for _ in range(3)]
    # A hang that ends before the fence: the survivor waited (grace, then the priority delay), the
    # resumed daemon re-observes instead of acting on its stale view, and nothing happens.
    start = lab.mark("short hang of the active's daemon")
    hung.hang_daemon()
    wait_code(survivor, "peer_silent_drbd_connected", timeout=30)
    wait_code(survivor, "peer_lost_waiting_delay", timeout=30)

    def stalls() -> int:
        return len(journal(hung, lambda e: e.get("CLEVER_REASON") == "stall_reobserving"))

    before = stalls()
    hung.resume_daemon()
    wait_code(survivor, "no_action_secondary", timeout=30)
    wait_code(hung, "no_action_primary", timeout=30)
    assert stalls() > before  # the resumed loop saw its own gap and observed afresh first
    assert records(survivor) == [] and "power_off" not in bmc_events(lab, hung)
    assert role_transitions(lab, hung.name, start) == [] and vm_transitions(lab, hung.name, start) == []
    # A hang past grace and delay: the survivor fences the hung node (its power goes, the daemon never
    # continues), then takes over.
    long = lab.mark("long hang of the active's daemon")
    hung.hang_daemon()
    wait_for(lambda: holds_all(lab, survivor.name), 120, "the survivor holds everything", interval=0.2)
    rec = records(survivor)[-1]
    assert rec["kind"] == "device" and rec["devices"] == [f"bmc-{hung.name}"], rec
    assert "power_off" in bmc_events(lab, hung)
    fenced_at = min(r.t for r in lab.records() if r.node == hung.name and r.kind == "power" and r.t > long)
    assert all(t > fenced_at for t in [r.t for r in lab.records() if r.node == survivor.name and r.kind == "role"
                                       and r.value == "Primary" and r.t > long]), lab.timeline()
    # Powered back on (fencing.after = "on"): a new boot that must hear its peer first; it becomes the standby.
    wait_code(hung, "no_action_secondary", timeout=120)
    assert wait_active(lab) is survivor
    assert "Primary" not in role_transitions(lab, hung.name, fenced_at)
    assert survivor.write(timeout=5)["ok"] and acked
    lab.check()


def test_fence_device_down_during_failover_waits_for_the_operator(make_nodelab: Callable[..., NodeLab]) -> None:
    lab = make_nodelab(overrides=OVERRIDES)
    dead, survivor = settled(lab)
    acked = [dead.write()["id"] for _ in range(3)]
    start = lab.mark("the active's BMC dies, then the active loses power")
    lab.bmc_kill(dead.index)
    lab.power_off(dead.index)
    # No positive evidence of OFF: no record, no promotion; status says the fence fails and what to do.
    st = wait_code(survivor, "fence_failed_retrying", timeout=90)
    after_decisions(survivor, 10)
    st = cli_json(survivor, "status")
    assert st["phase"] == "FENCING" and st["fencing"]["records"] == [] and st["fencing"]["failures"] >= 1, st["fencing"]
    wait_for(lambda: f"clevervm confirm-fenced {dead.name}" in cli_json(survivor, "status")["verdict"], 30,
             "the verdict to name the operator's way out", interval=0.2)
    assert role_transitions(lab, survivor.name, start) == [] and not any(lab.active().values())
    # The operator confirms the node is off: the survivor promotes.
    r = survivor.cli("confirm-fenced", dead.name)
    assert r.returncode == 0, r.stderr
    wait_for(lambda: holds_all(lab, survivor.name), 90, "the survivor holds everything", interval=0.2)
    assert records(survivor)[-1]["kind"] == "operator"
    assert survivor.write(timeout=5)["ok"] and acked
    assert code(survivor) in ("no_action_primary", "reconnecting_drbd")
    lab.check()


def test_fence_device_of_the_wrong_machine_is_refused_and_never_used(make_nodelab: Callable[..., NodeLab]) -> None:
    # node1's BMC reports another machine than node1: node2's only fence device does not control its peer.
    wrong = str(uuid.uuid4())
    lab = make_nodelab(overrides={**OVERRIDES, "cluster": {"preferred_node": "node1"}}, bmc_machine_ids={1: wrong})
    active = wait_active(lab)
    checker = lab.node(2)
    assert active is lab.node(1)
    wait_code(checker, "no_action_secondary")

    def refused() -> dict[str, Any] | None:
        dev = cli_json(checker, "status")["fencing"]["devices"][0]
        return dev if dev["identity"] == "mismatch" else None

    dev = wait_for(refused, 60, "node2's daemon to refuse the miswired device", interval=0.2)
    assert dev is not None and dev["usable"] is False, dev
    text = checker.cli("status").stdout
    assert re.search(rf"level 1 {re.escape(dev['name'])} \(.*\): NOT USABLE .*identity mismatch", text), text
    r = checker.cli("check", "--json")
    assert r.returncode == 1, r.stdout
    assert wrong in r.stdout and "machine id" in r.stdout, r.stdout
    assert any(wrong in e.get("MESSAGE", "") and e.get("CLEVER_REASON") == "fence_device_mismatch" for e in checker.journal_entries())
    # The active loses power: node2 cannot fence through the refused device, so it never promotes.
    start = lab.mark("power loss of the active")
    lab.power_off(active.index)
    wait_code(checker, "fence_failed_retrying", timeout=90)
    after_decisions(checker, 10)
    assert records(checker) == [] and role_transitions(lab, checker.name, start) == []
    assert "power_off" not in bmc_events(lab, active)
    assert not any(lab.active().values())
    lab.check()
