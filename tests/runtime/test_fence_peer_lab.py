"""DRBD's fence-peer handler against the wired daemon on the two-node lab (issue 5, DESIGN 4.5).

The replication-link cut with the LAN heartbeat up is in ``test_cluster.py``
(the peer outdated, answer 4). Here: the handler that finds no daemon answers
1 and the writes stay frozen until a restarted daemon has the peer outdated
and resumes I/O itself; and an operator who mounts the replicated device on
the standby during a partition makes nobody fence anybody.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from clever_cluster.sim.harness import wait_for
from clever_cluster.sim.nodelab.lab import NodeLab

from .cluster import OVERRIDES, after_decisions, cli_json, holds_all, other, role_transitions, wait_active, wait_code

pytestmark = [pytest.mark.root, pytest.mark.slow]

# The standby must not fence the active while its daemon is down for a moment: a long priority delay
# (the active was active) keeps the standby waiting while the test restarts the active's daemon.
PATIENT = {**OVERRIDES, "fencing": {"priority_delay": "120s", "random_delay": "0s"}}


def test_a_handler_with_no_daemon_answers_1_and_the_restarted_daemon_resumes_io(make_nodelab: Callable[..., NodeLab]) -> None:
    lab = make_nodelab(overrides=PATIENT)
    active = wait_active(lab)
    standby = other(lab, active)
    wait_code(standby, "no_action_secondary")
    start = lab.mark("kill the active's daemon, then cut the replication link")
    active.kill_daemon()
    lab.net.cut("hb0")
    # DRBD froze the Primary's I/O and ran the handler, which found no daemon: exit 1, I/O stays frozen.
    wait_for(lambda: "fence-peer handler exited 1" in active.sim.log(), 60, "the handler to give up", interval=0.1)
    assert active.sim.state()["susp"], active.sim.state()
    assert active.write(timeout=2)["ok"] is False  # frozen: never acknowledged
    assert active.sim.state()["susp"]
    # The restarted daemon finds the freeze with no handler running, has the peer (heard on hb1)
    # outdate its disk and resumes I/O itself.
    active.start_daemon()
    wait_for(lambda: not active.sim.state()["susp"], 60, "the restarted daemon to resume I/O", interval=0.1)
    assert standby.sim.state()["disk"] == "Outdated"
    assert active.write(timeout=5)["ok"]
    # Nobody fenced, nothing moved.
    assert cli_json(active, "status")["fencing"]["records"] == []
    assert cli_json(standby, "status")["fencing"]["records"] == []
    assert holds_all(lab, active.name) and role_transitions(lab, standby.name, start) == []
    lab.net.heal("hb0")
    wait_for(lambda: standby.sim.state()["disk"] == "UpToDate", 60, "the standby resynced", interval=0.1)
    lab.check()


def test_an_operator_mounting_the_device_on_the_standby_during_a_partition_fences_nobody(make_nodelab: Callable[..., NodeLab]) -> None:
    lab = make_nodelab(overrides=OVERRIDES)
    active = wait_active(lab)
    standby = other(lab, active)
    wait_code(standby, "no_action_secondary")
    start = lab.mark("cut the replication link, then mount the device on the standby")
    lab.net.cut("hb0")
    wait_for(lambda: active.sim.state()["peer_disk"] == "Outdated" and not active.sim.state()["susp"], 60,
             "the peer outdated and the writes resumed", interval=0.1)
    dev = standby.parts.loop_device
    target = standby.dir / "operator-mnt"
    standby.run("mkdir", "-p", str(target), check=True)
    r = standby.run("mount", dev, str(target))
    mounted = r.returncode == 0
    try:
        # The Secondary's device is read-only: at most a read-only mount. Whatever the mount did,
        # the daemons keep going: the active keeps writing and nobody is fenced.
        assert standby.sim.state()["role"] == "Secondary"
        after_decisions(active, 20)
        after_decisions(standby, 20)
        assert active.write(timeout=5)["ok"]
        assert cli_json(active, "status")["fencing"]["records"] == []
        assert cli_json(standby, "status")["fencing"]["records"] == []
        assert holds_all(lab, active.name) and role_transitions(lab, standby.name, start) == []
    finally:
        if mounted:
            standby.run("umount", str(target), check=True)
    lab.net.heal("hb0")
    wait_for(lambda: standby.sim.state()["disk"] == "UpToDate", 60, "the standby resynced", interval=0.1)
    lab.check()
