"""The cut-over of docs/migration.md on the lab: resources left running by the old cluster are adopted.

The lab starts without daemons and the resources are brought up by hand on
node2, as Pacemaker left them after `maintenance-mode=true` and its stop:
DRBD Primary, the filesystem mounted, the floating address, both VMs
running. Then the procedure: `clevervm status` with no daemon (exit 3, the
local view), `clevervm maintenance on --offline` on both nodes, the daemons
start and only observe, `maintenance off`: node2 keeps everything, and
nothing was stopped or restarted (the transition log has no role, mount or
VM change after the resources came up).
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from clever_cluster.daemon import config as config_mod
from clever_cluster.sim.nodelab.lab import NodeLab

from .cluster import MANAGED, OVERRIDES, cli_json, role_transitions, vm_transitions, wait_active, wait_code

pytestmark = [pytest.mark.root, pytest.mark.slow]


def test_cut_over_from_a_stopped_pacemaker_adopts_what_runs(make_nodelab: Callable[..., NodeLab]) -> None:
    lab = make_nodelab(daemons=False, overrides=OVERRIDES)
    lab.wait_connected()
    n1, n2 = lab.node(1), lab.node(2)
    ip = config_mod.load(n2.config, check_files=False).ip
    # What Pacemaker left running on node2.
    assert n2.drbdadm("primary", "r0").returncode == 0
    assert n2.run("mount", n2.parts.loop_device, str(n2.parts.mountpoint)).returncode == 0
    assert n2.run("ip", "addr", "add", str(ip.address), "dev", ip.interface).returncode == 0
    with n2.libvirt() as c:
        for vm in MANAGED:
            c.lookupByName(vm).create()
    acked = [n2.write()["id"] for _ in range(3)]
    up = lab.mark("the old cluster's resources run on node2")

    # No daemon yet: status shows what node2 holds, exit 3.
    r = n2.cli("status")
    assert r.returncode == 3 and r.stdout.startswith("*** daemon not running")
    assert "role Primary" in r.stdout and "mounted here" in r.stdout and f"Floating IP {ip.address}: here" in r.stdout
    assert "Name: plc1 State: running" in r.stdout and "Name: plc2 State: running" in r.stdout

    for n in (n1, n2):
        r = n.cli("maintenance", "on", "--offline")
        assert r.returncode == 0 and "maintenance on written to" in r.stdout, r.stderr
    for n in (n1, n2):
        n.start_daemon()
    for n in (n1, n2):
        wait_code(n, "maintenance_observing", timeout=60)
    st = cli_json(n2, "status")
    assert st["phase"] == "MAINTENANCE" and st["intent"]["maintenance"] is True
    assert st["active_node"] == "node2" and cli_json(n1, "status")["active_node"] == "node2"
    assert "MAINTENANCE MODE" in n1.cli("status").stdout

    got = cli_json(n1, "maintenance", "off")  # from the standby: the intent is replicated
    assert got["next"].startswith("maintenance off")
    active = wait_active(lab, timeout=90)
    assert active is n2
    wait_code(n1, "no_action_secondary", timeout=60)
    # Adopted, not restarted: no role, mount or VM transition on either node since the resources came up.
    assert role_transitions(lab, "node2", up) == [] and role_transitions(lab, "node1", up) == []
    assert vm_transitions(lab, "node2", up) == [] and vm_transitions(lab, "node1", up) == []
    assert not [r for r in lab.records() if r.kind == "mount" and r.t > up]
    assert cli_json(n2, "status")["ip"]["present"] is True
    assert n2.write()["ok"] and acked
    lab.check()
