"""Issue 9's network, VM, split-brain and upgrade scenarios: real daemons on the two-node lab under real faults.

Each test brings up one lab (``tests/e2e/conftest.py`` closes it and asserts
that nothing is left: namespaces, mounts, loop devices, processes), injects
its faults, asserts through ``clevervm`` (status/why/split-brain JSON), the
journal capture and the transition log, and ends with ``lab.check()``: never
two active (from the transition intervals) and no acknowledged write lost.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import libvirt
import pytest

from clever_cluster.sim.harness import wait_for
from clever_cluster.sim.nodelab import transitions
from clever_cluster.sim.nodelab.lab import NodeLab
from clever_cluster.sim.nodelab.node import LabNode
from tests.runtime.cluster import (
    OVERRIDES,
    after_decisions,
    cli_json,
    code,
    holds_all,
    other,
    role_transitions,
    vm_transitions,
    wait_active,
    wait_code,
)

pytestmark = [pytest.mark.root, pytest.mark.slow]

CLEVERVM = str(Path(sys.executable).with_name("clevervm"))


def decisions(n: LabNode) -> list[tuple[str, str]]:
    """The node's decision journal entries so far (one per change of reason code), as (reason, phase)."""
    return [(e["CLEVER_REASON"], e["CLEVER_PHASE"]) for e in n.journal_entries() if "CLEVER_PHASE" in e and "CLEVER_REASON" in e]


def power_offs(lab: NodeLab, since: float) -> list[transitions.Record]:
    return [r for r in lab.records() if r.t > since and r.kind == "power" and r.value == "off"]


# --------------------------------------------------------------------------- heartbeat partition


def test_both_heartbeat_links_cut_leaves_exactly_one_active_and_fences_the_other(make_nodelab: Callable[..., NodeLab]) -> None:
    lab = make_nodelab(overrides=OVERRIDES)
    active = wait_active(lab)
    standby = other(lab, active)
    wait_code(standby, "no_action_secondary")
    acked = [active.write()["id"] for _ in range(2)]
    start = lab.mark("cut both heartbeat links (the gateway and the BMCs stay reachable)")
    lab.net.cut("hb0")
    lab.net.cut("hb1")
    # Both lose the peer; the node holding the resources fences first (the other waits the priority delay).
    off = lab.wait_record(lambda r: r.t > start and r.kind == "power" and r.value == "off", 90, "a node powered off")
    assert off.node == standby.name and off.get("via") == "bmc", lab.timeline(("power", "fault"))
    # The coordinator records the fence once the BMC reads OFF (after the power-off itself).
    recs = wait_for(lambda: cli_json(active, "status")["fencing"]["records"], 60, "the fence record", interval=0.2)
    assert recs and recs[-1]["kind"] == "device" and recs[-1]["devices"] == [f"bmc-{standby.name}"], recs
    assert holds_all(lab, active.name) and role_transitions(lab, active.name, start) == []
    # The fenced node boots again (fencing.after = on) with the links still cut: it has not heard its
    # peer in this boot, so it neither fences back nor promotes.
    wait_for(lambda: standby.power == "on" and code(standby) is not None, 90, "the fenced node back with its daemon", interval=0.2)
    after_decisions(standby, 30, timeout=60)
    assert len(power_offs(lab, start)) == 1, lab.timeline(("power",))
    assert cli_json(standby, "status")["fencing"]["records"] == []
    assert role_transitions(lab, standby.name, off.t) == [] and holds_all(lab, active.name)
    lab.net.heal("hb0")
    lab.net.heal("hb1")
    wait_code(standby, "no_action_secondary", timeout=90)
    assert active.write()["ok"] and acked
    assert len(power_offs(lab, start)) == 1
    lab.check()


# --------------------------------------------------------------------------- gateway


def test_active_losing_its_gateway_hands_over_after_the_dampening(make_nodelab: Callable[..., NodeLab]) -> None:
    lab = make_nodelab(overrides=OVERRIDES)
    old = wait_active(lab)
    new = other(lab, old)
    wait_code(new, "no_action_secondary")
    dampen = float(OVERRIDES["gateway"]["dampen"].rstrip("s"))
    acked = [old.write()["id"] for _ in range(2)]
    start = lab.mark("the active loses its gateway (LAN peer and BMCs still reachable)")
    lab.net.cut_gateway(old.index)
    wait_for(lambda: holds_all(lab, new.name), 90, "the resources on the node that still has its gateway", interval=0.1)
    wait_active(lab)
    # A handover, not a fence: the old node demoted itself, nobody was powered off.
    assert role_transitions(lab, old.name, start) == ["Secondary"] and role_transitions(lab, new.name, start) == ["Primary"]
    assert power_offs(lab, start) == []
    assert cli_json(new, "status")["fencing"]["records"] == [] and cli_json(old, "status")["fencing"]["records"] == []
    # The reason is in the journal with the score comparison, counted only after gateway.dampen.
    demote = [e for e in old.journal_entries() if e.get("CLEVER_REASON") == "handover_demoting"]
    assert demote and "gateway score" in demote[0]["MESSAGE"], [e.get("MESSAGE") for e in old.journal_entries()][-20:]
    lower_for = re.search(r"for ([0-9.]+)s \(dampen", demote[0]["MESSAGE"])
    assert lower_for is not None and float(lower_for.group(1)) >= dampen, demote[0]["MESSAGE"]
    demoted = next(r for r in lab.records() if r.t > start and r.node == old.name and r.kind == "role" and r.value == "Secondary")
    assert demoted.t - start >= dampen
    # The old node, without its gateway, is not a candidate to come back.
    after_decisions(old, 20)
    assert holds_all(lab, new.name)
    assert new.write()["ok"] and acked
    lab.net.heal_gateway(old.index)
    lab.check()


# --------------------------------------------------------------------------- VM crash


def crash(n: LabNode, vm: str, tag: str) -> None:
    """The guest crashes: libvirt's test driver stops it with reason 'crashed' (a crash dump, VIR_DUMP_CRASH)."""
    n.lab.fault_rec.record(n.name, "fault", f"VM {vm} crashes")
    with n.libvirt() as c:
        c.lookupByName(vm).coreDump(str(n.dir / f"{vm}-{tag}.core"), libvirt.VIR_DUMP_CRASH)


def fail_counts(n: LabNode) -> dict[str, int]:
    st = cli_json(n, "status")
    here = next(x for x in st["nodes"] if x["name"] == n.name)
    return dict(here["fail_counts"])


def test_vm_crash_restarts_locally_then_past_the_threshold_the_group_moves(make_nodelab: Callable[..., NodeLab]) -> None:
    threshold = 2  # policy.migration_threshold: failures of one VM on a node before the group moves
    lab = make_nodelab(overrides={**OVERRIDES, "policy": {"migration_threshold": threshold}})
    first = wait_active(lab)
    second = other(lab, first)
    wait_code(second, "no_action_secondary")
    start = lab.mark("plc1 crashes")
    crash(first, "plc1", "1")
    wait_for(lambda: fail_counts(first) == {"plc1": 1} and first.vm_states()["plc1"], 60, "plc1 restarted here, fail count 1",
             interval=0.2)
    assert any(e.get("CLEVER_REASON") == "vm_restarting_after_crash" for e in first.journal_entries())
    assert holds_all(lab, first.name) and role_transitions(lab, first.name, start) == []
    assert ("plc2", "inactive") not in vm_transitions(lab, first.name, start)  # only the crashed VM was touched
    # The second crash reaches the threshold: the whole group is handed over to the peer.
    again = lab.mark("plc1 crashes again")
    wait_for(lambda: first.vm_states()["plc1"], 30, "plc1 running", interval=0.1)
    crash(first, "plc1", "2")
    wait_for(lambda: holds_all(lab, second.name), 90, "the group on the peer", interval=0.1)
    wait_active(lab)
    assert role_transitions(lab, first.name, again) == ["Secondary"] and power_offs(lab, start) == []
    assert fail_counts(first) == {"plc1": threshold}
    moved = [e["MESSAGE"] for e in first.journal_entries() if e.get("CLEVER_REASON") == "handover_demoting"]
    assert moved and f"VM plc1 failed {threshold} times here (migration_threshold {threshold})" in moved[0], moved
    # cleanup clears the counts (replicated intent: asked on the new active, applied on the old node too).
    got = cli_json(second, "cleanup")
    assert got["intent"]["version"] >= 1
    wait_for(lambda: fail_counts(first) == {}, 30, "the fail counts cleared on the old node", interval=0.2)
    assert any(e.get("CLEVER_REASON") == "cleanup" for e in first.journal_entries())
    after_decisions(second, 10)
    assert holds_all(lab, second.name)  # stickiness: clearing the counts moves nothing back
    lab.check()


# --------------------------------------------------------------------------- split brain


def typed(n: LabNode, answer: str, *args: str) -> subprocess.CompletedProcess[str]:
    """``clevervm ARGS`` on ``n`` with ``answer`` typed at its confirmation prompt."""
    return subprocess.run([*n.prefix(), CLEVERVM, "--config", str(n.config), *args], input=answer + "\n",
                          capture_output=True, text=True, timeout=120, check=False)


def test_split_brain_blocks_both_nodes_and_is_resolved_with_the_named_victim(make_nodelab: Callable[..., NodeLab]) -> None:
    # The daemons start in maintenance (observe only) so that the operator's hand makes the split brain:
    # with the cluster in charge neither node would promote alone while the other could still write.
    lab = make_nodelab(overrides=OVERRIDES, maintenance=True)
    keeper, victim = lab.node(1), lab.node(2)
    for n in lab.nodes:
        wait_code(n, "maintenance_observing", timeout=60)
    lab.wait_connected(60)
    start = lab.mark("operator: disconnect, then each node Primary alone with its own writes")
    for n in (victim, keeper):
        assert n.drbdadm("disconnect", "r0").returncode == 0
    # One after the other (never two Primaries at once): each writes while the other cannot see it.
    assert victim.drbdadm("primary", "--force", "r0").returncode == 0
    discarded = [victim.write()["id"] for _ in range(2)]
    assert victim.drbdadm("secondary", "r0").returncode == 0
    assert keeper.drbdadm("primary", "--force", "r0").returncode == 0
    kept = [keeper.write()["id"] for _ in range(2)]
    assert keeper.drbdadm("secondary", "r0").returncode == 0
    for n in (victim, keeper):
        n.drbdadm("connect", "r0")
    wait_for(lambda: all(n.sim.state()["conn"] == "StandAlone" for n in lab.nodes), 30, "DRBD StandAlone after the handshake",
             interval=0.1)
    assert "Split-Brain detected" in keeper.sim.log() and "Split-Brain detected" in victim.sim.log()
    cli_json(keeper, "maintenance", "off")
    released = lab.mark("maintenance off")
    for n in lab.nodes:
        st = wait_code(n, "blocked_split_brain", timeout=60)
        assert st["phase"] == "BLOCKED" and st["drbd"]["split_brain"] is True
    for n in lab.nodes:
        after_decisions(n, 20)
        assert code(n) == "blocked_split_brain"
    # Nobody promoted, mounted or started a VM once the cluster was in charge again.
    assert not [r for r in lab.records() if r.t > released and r.kind in ("role", "mount", "vm") and r.node in ("node1", "node2")
                and (r.kind != "vm" or r.get("domain") in ("plc1", "plc2"))], lab.timeline()
    # The evidence: generations and roles of both nodes, and the exact recovery commands.
    sb = cli_json(keeper, "split-brain")
    assert sb["split_brain"] is True and sb["this_node"]["node"] == keeper.name and sb["peer"]["node"] == victim.name
    gen = sb["this_node"]["generation"]
    assert re.fullmatch(r"[0-9A-F]{16}", gen["current"]) and gen["bitmap"], gen
    assert sb["this_node"]["role"] == "Secondary" and sb["peer"]["role"] == "Secondary" and sb["peer"]["heard"] == "alive"
    assert any("clevervm split-brain --resolve --victim" in line for line in sb["recovery"]), sb["recovery"]
    text = keeper.cli("split-brain").stdout
    assert "SPLIT BRAIN reported" in text
    # A wrong name at the prompt changes nothing.
    r = typed(victim, keeper.name, "split-brain", "--resolve", "--victim", victim.name)
    assert r.returncode != 0 and "type the victim's name" in r.stderr
    assert victim.sim.state()["conn"] == "StandAlone"
    # The victim discards its changes, the survivor reconnects; DRBD resyncs from the survivor.
    r = typed(victim, victim.name, "split-brain", "--resolve", "--victim", victim.name)
    assert r.returncode == 0, r.stderr
    r = typed(keeper, victim.name, "split-brain", "--resolve", "--victim", victim.name)
    assert r.returncode == 0, r.stderr
    wait_for(lambda: all(n.sim.state()["conn"] == "Connected" and n.sim.state()["disk"] == "UpToDate" for n in lab.nodes), 60,
             "connected and resynced", interval=0.1)
    for n in lab.nodes:
        cli_json(n, "unblock")
    active = wait_active(lab, timeout=90)
    assert active.write()["ok"] and kept
    # Exactly the victim's writes were lost (and nothing else): the ones the operator chose to discard.
    lost = {w.write for w in transitions.lost_writes(lab.records()) if w.acked.t > start}
    assert lost == set(discarded), lost
    lab.check(allow_lost_writes=True)


# --------------------------------------------------------------------------- loss


DRBD_LINK_CODES = {"outdating_peer", "peer_outdated_answered", "resuming_io", "reconnecting_drbd", "outdating_local_disk",
                   "no_action_primary", "no_action_secondary"}


def heartbeat_of(n: LabNode) -> dict[str, Any]:
    hb: dict[str, Any] = cli_json(n, "status")["heartbeat"]
    return hb


def test_loss_and_bursts_on_both_heartbeat_links_for_a_minute_change_nothing(make_nodelab: Callable[..., NodeLab]) -> None:
    lab = make_nodelab(overrides=OVERRIDES)
    active = wait_active(lab)
    standby = other(lab, active)
    wait_code(standby, "no_action_secondary")
    before = {n.name: decisions(n) for n in lab.nodes}
    acked = [active.write()["id"] for _ in range(2)]
    timeout = 1.0  # heartbeat.timeout (the daemon's default, not overridden)
    start = lab.mark("30 % loss on hb0 and hb1 for 30 s, then 30 s of total-cut bursts shorter than the timeout")
    for link in ("hb0", "hb1"):
        lab.net.loss(link, 30)  # both directions at node1's end
    seen_loss: dict[str, list[float]] = {n.name: [] for n in lab.nodes}
    end = time.monotonic() + 30
    while time.monotonic() < end:
        for n in lab.nodes:
            seen_loss[n.name] += [float(ln["loss_in"] or 0) for ln in heartbeat_of(n)["links"]]
        time.sleep(2)
    # Bursts: both links cut at once (one nftables transaction at node1) for less than the timeout, 30 % loss in between.
    ns = lab.node(1).ns
    end = time.monotonic() + 30
    bursts = 0
    while time.monotonic() < end:
        lab.mark("burst: both heartbeat links cut")
        lab.netlab.blackout(ns, ["hb0", "hb1"])
        time.sleep(timeout * 0.4)
        lab.netlab.end_blackout(ns)
        lab.mark("burst over")
        bursts += 1
        time.sleep(2)
    for link in ("hb0", "hb1"):
        lab.net.heal(link)
    wait_for(lambda: all(n.sim.state()["conn"] == "Connected" and n.sim.state()["disk"] == "UpToDate" for n in lab.nodes), 60,
             "DRBD connected and in sync again", interval=0.2)
    wait_code(active, "no_action_primary")
    wait_code(standby, "no_action_secondary")
    # No failover, no fence, no VM or role change, the peer never lost.
    assert bursts >= 10
    assert power_offs(lab, start) == [] and role_transitions(lab, active.name, start) == []
    assert role_transitions(lab, standby.name, start) == []
    assert vm_transitions(lab, active.name, start) == [] and holds_all(lab, active.name)
    for n in lab.nodes:
        # hb0 also carries DRBD: when its TCP stream stalls past DRBD's ping timeout, DRBD freezes the
        # writes and runs fence-peer; the peer, still heard, outdates its disk and resyncs. Only that
        # path may change a decision; everything else the loss changes is link quality.
        changed = decisions(n)[len(before[n.name]):]
        assert {c for c, _ in changed} <= DRBD_LINK_CODES and {p for _, p in changed} <= {"PRIMARY", "SECONDARY"}, changed
        hb = heartbeat_of(n)
        assert hb["state"] == "alive" and hb["longest_silence"] < timeout, hb["longest_silence"]
        assert cli_json(n, "status")["fencing"]["records"] == []
        # The loss was measured on the links of both nodes.
        assert max(seen_loss[n.name]) >= 0.1, seen_loss[n.name]
    assert active.write(timeout=30)["ok"] and acked
    lab.check()


# --------------------------------------------------------------------------- rolling upgrade


def restart_daemon(n: LabNode, env: dict[str, str]) -> None:
    """``clevervm daemon-restart`` (the peer expects it back), then the daemon starts again as systemd would, with ``env``."""
    r = n.cli("daemon-restart")
    assert r.returncode == 0, r.stderr
    d = n.daemon
    assert d is not None
    wait_for(lambda: not d.alive(), 30, f"{n.name}'s daemon to exit for the restart", interval=0.05)
    n.daemon_env = env
    n.start_daemon()


def protocol(n: LabNode) -> dict[str, Any]:
    p: dict[str, Any] = heartbeat_of(n)["protocol"]
    return p


def test_rolling_upgrade_with_a_peer_speaking_the_previous_protocol(make_nodelab: Callable[..., NodeLab]) -> None:
    lab = make_nodelab(overrides=OVERRIDES)
    active = wait_active(lab)
    standby = other(lab, active)
    wait_code(standby, "no_action_secondary")
    assert protocol(active)["peer_sends"] == 2
    start = lab.mark("the standby runs the previous release (protocol 1)")
    restart_daemon(standby, {"CLEVER_CLUSTERD_MAX_PROTOCOL": "1"})
    wait_for(lambda: protocol(active)["peer_sends"] == 1 and protocol(active)["peer_reads_up_to"] == 1, 30,
             "the active hearing protocol 1", interval=0.2)
    wait_code(standby, "no_action_secondary", timeout=60)
    # Both speak version 1 now; nobody is fenced, nothing moves.
    p = protocol(active)
    assert p["sending"] == 1 and p["this_node_reads"] == [1, 2], p
    assert protocol(standby)["this_node_reads"] == [1, 1] and protocol(standby)["peer_sends"] == 1
    after_decisions(active, 20)
    assert code(active) == "no_action_primary" and code(standby) == "no_action_secondary"
    assert active.write()["replicated"] is True
    # The upgraded release comes back on the standby: version 2 again, still nothing moved.
    restart_daemon(standby, {})
    wait_for(lambda: protocol(active)["peer_sends"] == 2 and protocol(active)["sending"] == 2, 30, "protocol 2 again", interval=0.2)
    wait_code(standby, "no_action_secondary", timeout=60)
    assert power_offs(lab, start) == [] and role_transitions(lab, active.name, start) == []
    assert role_transitions(lab, standby.name, start) == [] and vm_transitions(lab, active.name, start) == []
    for n in lab.nodes:
        assert cli_json(n, "status")["fencing"]["records"] == []
    lab.check()
