"""The wired daemon on the two-node lab: real daemons, real DRBD simulator, libvirt, BMCs, faults.

Each test brings up a lab (``tests/e2e/conftest.py`` closes it and proves
nothing is left), drives it through ``clevervm`` and faults, and ends with
``lab.check()``: never two active (from the transition log's intervals) and
no acknowledged write lost.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from clever_cluster.daemon.decisionlog import message_id
from clever_cluster.sim.harness import wait_for
from clever_cluster.sim.nodelab.drive import wait_devices_verified
from clever_cluster.sim.nodelab.lab import NodeLab

from .cluster import (
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


@pytest.fixture
def lab(make_nodelab: Callable[..., NodeLab]) -> NodeLab:
    return make_nodelab(overrides=OVERRIDES)


def test_cold_start_elects_exactly_one_and_logs_each_decision(lab: NodeLab) -> None:
    active = wait_active(lab)
    standby = other(lab, active)
    wait_code(standby, "no_action_secondary")
    st = cli_json(active, "status")
    assert st["schema"] == 1 and st["active_node"] == active.name and st["phase"] == "PRIMARY"
    assert {v["name"]: v["running"] for v in st["vms"]} == {"plc1": True, "plc2": True}
    assert st["filesystem"]["mounted"] and st["ip"]["present"] and st["drbd"]["role"] == "Primary"
    sb = cli_json(standby, "status")
    assert sb["phase"] == "SECONDARY" and sb["active_node"] == active.name
    why = cli_json(standby, "why")
    assert any("stickiness" in x for x in why["not_active_because"]), why
    # One journal entry per change of decision, with the structured fields and a stable MESSAGE_ID.
    entries = [e for e in active.journal_entries() if e.get("CLEVER_REASON") == "election_promoting"]
    assert len(entries) == 1, entries
    e = entries[0]
    assert e["MESSAGE_ID"] == message_id("election_promoting") and e["CLEVER_PHASE"] == "PROMOTING"
    assert e["CLEVER_PEER"] == standby.name and e["CLEVER_ACTION"] == "Promote" and e["CLEVER_EPOCH"].endswith(f"@{active.name}")
    assert e["SYSLOG_IDENTIFIER"] == "clever-clusterd" and "promote with epoch" in e["MESSAGE"]
    assert next(x for x in standby.journal_entries() if x.get("CLEVER_REASON") == "no_action_secondary")["CLEVER_ACTION"] == "none"
    hist = cli_json(active, "history")
    assert any(t["kind"] == "cold_start" and t["outcome"] == "active here" for t in hist["timelines"]), hist["timelines"]
    lab.check()


def test_migrate_hands_over_with_saved_vms(lab: NodeLab) -> None:
    old = wait_active(lab)
    new = other(lab, old)
    acked = [old.write()["id"] for _ in range(3)]
    start = lab.mark("migrate")
    got = cli_json(old, "migrate")
    assert "move to" in got["next"] and got["preflight"] == []
    wait_for(lambda: holds_all(lab, new.name), 60, "the resources on the new node", interval=0.1)
    wait_active(lab)
    # The VMs were saved on the old node and restored (not cold-booted) on the new one.
    runs = cli_json(new, "status")["resources"]["history"]
    vm_notes = [p["detail"] for r in runs for p in r["phases"] if p["step"] == "vms" and p["action"] == "start"]
    assert any("plc1: restored from its save image" in d and "plc2: restored from its save image" in d for d in vm_notes), vm_notes
    assert role_transitions(lab, old.name, start) == ["Secondary"] and role_transitions(lab, new.name, start) == ["Primary"]
    hist = cli_json(old, "history")
    out = [t for t in hist["timelines"] if t["kind"] == "handover_out"]
    assert out and out[-1]["outcome"] == "handed over", hist["timelines"]
    assert [m["name"] for m in out[-1]["marks"]][:2] == ["handover_decided", "demote_started"]
    assert any(s["kind"] == "stop" for s in out[-1]["sequences"])
    # The ban stays: unmigrate lifts it and says the resources stay.
    assert "stickiness keeps" in cli_json(new, "unmigrate")["next"]
    assert new.write()["ok"] and acked
    lab.check()


def test_active_powered_off_through_its_bmc_fails_over_with_cold_booted_vms(lab: NodeLab) -> None:
    dead = wait_active(lab)
    survivor = other(lab, dead)
    wait_code(survivor, "no_action_secondary")
    wait_devices_verified(survivor)  # a device is verified only while its machine runs
    acked = [dead.write()["id"] for _ in range(3)]
    start = lab.mark("power off the active through its BMC")
    r = lab.ipmi(survivor.index, dead.index, "chassis", "power", "off")
    assert r.returncode == 0, r.stderr
    wait_for(lambda: holds_all(lab, survivor.name), 90, "the survivor holds everything", interval=0.1)
    st = cli_json(survivor, "status")
    recs = st["fencing"]["records"]
    assert recs and recs[-1]["kind"] == "device" and recs[-1]["devices"] == [f"bmc-{dead.name}"], recs
    runs = st["resources"]["history"]
    vm_notes = [p["detail"] for r in runs for p in r["phases"] if p["step"] == "vms" and p["action"] == "start"]
    assert any("plc1: cold-booted" in d for d in vm_notes), vm_notes
    hist = cli_json(survivor, "history")
    fo = [t for t in hist["timelines"] if t["kind"] == "failover"]
    assert fo, hist["timelines"]
    names = [m["name"] for m in fo[-1]["marks"]]
    assert names[:4] == ["peer_lost", "fence_started", "fence_confirmed", "promote_started"], names
    assert all(p["seconds"] >= 0 for p in fo[-1]["phases"])
    # The survivor's metrics: the confirmed fence, and the failover's phases once its timeline closed (a failover whose
    # promotion was rolled back is closed by the next timeline: its phases count, its total does not).
    fenced = 'clever_failover_phase_seconds_count{phase="fence_confirmed"}'
    wait_for(lambda: survivor.metrics()[fenced] >= 1, 60, "the closed failover timeline in the survivor's histogram", interval=0.2)
    m = survivor.metrics()
    done = [t for t in cli_json(survivor, "history")["timelines"]
            if t["kind"] == "failover" and t["done"] and any(mk["name"] == "fence_confirmed" for mk in t["marks"])]
    assert m['clever_fence_attempts_total{result="confirmed_off"}'] >= 1
    assert m['clever_fence_duration_seconds_count{result="confirmed_off"}'] == m['clever_fence_attempts_total{result="confirmed_off"}']
    assert m[fenced] == len(done) >= 1, done
    assert m['clever_failover_phase_seconds_count{phase="total"}'] == len([t for t in done if t["outcome"] == "active here"]), done
    assert m['clever_failover_phase_seconds_sum{phase="fence_confirmed"}'] > 0
    # The fenced node is powered back on (fencing.after = "on") and comes back as the standby.
    wait_code(dead, "no_action_secondary", timeout=90)
    assert survivor.write()["ok"] and acked
    assert not [v for v in vm_transitions(lab, survivor.name, start) if v[1] == "inactive"]
    # One fence, one "fencing" alert: when the BMC powers the peer back on while the promotion waits in its own
    # fence-peer call, the voided record once made the decision alternate probing/fencing (an alert per step).
    fencing_alerts = [e for e in survivor.journal_entries() if e.get("CLEVER_ALERT") == "fencing"]
    assert len(fencing_alerts) == 1, [e.get("MESSAGE") for e in fencing_alerts[:5]]
    lab.check()


def test_daemon_killed_on_the_active_restarts_and_adopts(lab: NodeLab) -> None:
    active = wait_active(lab)
    standby = other(lab, active)
    wait_code(standby, "no_action_secondary")
    start = lab.mark("SIGKILL the active's daemon")
    active.kill_daemon()
    active.start_daemon()
    wait_code(active, "no_action_primary", timeout=60)
    # Nothing was restarted and nobody was fenced: the resources never left the node.
    assert vm_transitions(lab, active.name, start) == [] and role_transitions(lab, active.name, start) == []
    assert not [r for r in lab.records() if r.t > start and r.kind == "mount"]
    assert cli_json(standby, "status")["fencing"]["records"] == []
    assert cli_json(standby, "status")["phase"] == "SECONDARY"
    assert active.write()["replicated"] is True
    lab.check()


def test_clean_stop_of_the_standby_fences_nobody(lab: NodeLab) -> None:
    active = wait_active(lab)
    standby = other(lab, active)
    wait_code(standby, "no_action_secondary")
    lab.shutdown(standby.index)
    # The standby left cleanly; DRBD outdated it on the graceful disconnect: the active keeps writing.
    wait_code(active, "peer_left", timeout=30)
    w = active.write(timeout=5)
    assert w["ok"] and w["replicated"] is False
    st = cli_json(active, "status")
    assert st["fencing"]["records"] == [] and st["drbd"]["suspended"] == [] and st["phase"] == "PRIMARY"
    left = [e for e in standby.journal_entries() if e.get("CLEVER_REASON") == "shutdown_ready"]
    assert left and left[0]["CLEVER_PHASE"] == "SECONDARY"
    lab.check()


def test_replication_link_cut_outdates_the_peer_through_fence_peer(lab: NodeLab) -> None:
    active = wait_active(lab)
    standby = other(lab, active)
    wait_code(standby, "no_action_secondary")
    start = lab.mark("cut the replication link")
    lab.net.cut("hb0")
    # DRBD froze I/O on the active and ran the handler; the policy had the peer (heard on hb1) outdated.
    wait_for(lambda: active.sim.state()["peer_disk"] == "Outdated" and not active.sim.state()["susp"], 60,
             "the peer outdated and the writes resumed", interval=0.1)
    assert standby.sim.state()["disk"] == "Outdated"
    assert active.write(timeout=5)["ok"]
    assert "fence-peer handler exited 4" in active.sim.log()
    assert [e for e in active.journal_entries() if e.get("CLEVER_REASON") == "peer_outdated_answered"]
    # No failover, nobody fenced.
    assert holds_all(lab, active.name) and role_transitions(lab, standby.name, start) == []
    assert cli_json(active, "status")["fencing"]["records"] == []
    lab.net.heal("hb0")
    wait_for(lambda: standby.sim.state()["disk"] == "UpToDate", 60, "the standby resynced", interval=0.1)
    lab.check()


def test_maintenance_mode_takes_no_action(lab: NodeLab) -> None:
    active = wait_active(lab)
    standby = other(lab, active)
    got = cli_json(standby, "maintenance", "on")  # from either node
    assert "only observes" in got["next"]
    wait_code(active, "maintenance_observing")
    with active.libvirt() as c:
        c.lookupByName("plc1").destroy()
    after_decisions(active, 30)
    assert active.vm_states()["plc1"] is False and code(active) == "maintenance_observing"
    cli_json(active, "maintenance", "off")
    wait_for(lambda: active.vm_states()["plc1"] is True, 30, "plc1 brought back after maintenance", interval=0.1)
    wait_active(lab)
    lab.check()



def test_active_restart_while_the_standby_is_shut_down_fences_nobody(lab: NodeLab) -> None:
    """The standby shuts down cleanly and stays off; then the active's daemon is restarted (killed and
    started: resources kept). The restarted daemon has not heard its peer in this run; the policy's
    Durable.peer_left says it left cleanly. Before the state file kept that field, the active fenced
    the machine in maintenance at once (and fencing.after = on powered it back on)."""
    active = wait_active(lab)
    standby = other(lab, active)
    wait_code(standby, "no_action_secondary")
    lab.shutdown(standby.index)
    wait_code(active, "peer_left", timeout=30)
    start = lab.mark("restart the active's daemon")
    active.kill_daemon()
    active.start_daemon()
    wait_code(active, "peer_left", timeout=60)
    after_decisions(active, 60)  # longer than the fence delays (3 s + 0.5 s at a 0.1 s tick)
    st = cli_json(active, "status")
    assert st["fencing"]["records"] == [] and st["fencing"]["attempt"] is None, st["fencing"]
    assert st["phase"] == "PRIMARY" and code(active) == "peer_left"
    assert role_transitions(lab, active.name, start) == [] and standby.power == "off"
    lab.check()


def test_clean_stop_of_the_grantee_racing_a_handover(lab: NodeLab) -> None:
    """`migrate` on the active; while the standby promotes under the grant it acknowledged (it counts as
    active from then on), it is stopped cleanly (SIGTERM). The old active is banned, so nobody can take
    over: the stopping grantee stops what it had started before it leaves, and the old active, which has
    no fence record and no longer hears the grantee, does not take the resources back (S1): never two
    active, no acknowledged write lost, nothing left running on the node whose daemon stopped."""
    import signal

    old = wait_active(lab)
    new = other(lab, old)
    wait_code(new, "no_action_secondary")
    acked = [old.write()["id"] for _ in range(3)]
    cli_json(old, "migrate")
    wait_code(new, {"handover_acknowledged", "handover_promoting", "handover_waiting_drbd", "sequence_in_progress"}, timeout=60)
    lab.mark("SIGTERM the grantee")
    assert new.daemon is not None
    new.daemon.signal(signal.SIGTERM)
    wait_for(lambda: new.daemon is not None and not new.daemon.alive(), 120, "the grantee's daemon to stop", interval=0.2)
    assert not lab.active()[new.name], lab.active()
    wait_code(old, "peer_left", timeout=30)
    assert not lab.active()[old.name] and acked
    lab.check()
