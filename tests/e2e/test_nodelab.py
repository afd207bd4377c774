"""The end-to-end lab itself: it comes up, records every transition, catches overlaps, powers nodes off
and on the way a BMC does, and leaves nothing behind.

These tests prove the harness with the parts that exist (the daemon is the
skeleton): the issue-9 scenarios run on the same lab with the wired daemon.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from clever_cluster.daemon.control import DaemonUnreachable
from clever_cluster.sim.harness import wait_for
from clever_cluster.sim.nodelab import nodeconfig
from clever_cluster.sim.nodelab import transitions as tr
from clever_cluster.sim.nodelab.lab import NodeLab, cleanup_stale
from clever_cluster.sim.nodelab.nodeconfig import schema_has_machine_id
from tests.conftest import require_root

pytestmark = pytest.mark.root

NODE_PROCESSES = {"holder", "drbd simulator", "libvirtd", "libvirt keeper", "daemon"}


def ro(dev: str) -> bool:
    return subprocess.run(["blockdev", "--getro", dev], capture_output=True, text=True, check=True).stdout.strip() == "1"


def ns_inode(pid: int, kind: str) -> int:
    return os.stat(f"/proc/{pid}/ns/{kind}").st_ino


def of(recs: list[tr.Record], node: str, kind: str, value: object = None) -> list[tr.Record]:
    return [r for r in recs if r.node == node and r.kind == kind and (value is None or r.value == value)]


@pytest.mark.parametrize("drbd", ["9", "8.4"])
def test_lab_comes_up_with_each_node_in_its_own_namespaces(make_nodelab: Callable[..., NodeLab], drbd: str) -> None:
    lab = make_nodelab(drbd_version=drbd, maintenance=True)  # the daemons observe only: both stay Secondary
    lab.wait_connected()
    for n in lab.nodes:
        assert n.daemon is not None and n.holder is not None
        st = n.status()
        assert (st["node"], st["peer"], st["daemon"]["pid"]) == (n.name, f"node{3 - n.index}", n.daemon.pid)
        assert st["intent"]["maintenance"] is True
        # The daemon runs in the node's network namespace and in the node's (not the host's) mount namespace.
        assert ns_inode(n.daemon.pid, "net") == os.stat(f"/run/netns/{n.ns}").st_ino
        assert ns_inode(n.daemon.pid, "mnt") == ns_inode(n.holder.pid, "mnt") != ns_inode(os.getpid(), "mnt")
        # Its journal is the node's capture (journald's socket in the node's mount namespace).
        started = wait_for(lambda n=n: [e for e in n.journal_entries() if "started: node " + n.name in e.get("MESSAGE", "")],
                           10, f"{n.name}'s start in its journal")
        assert started[0]["SYSLOG_IDENTIFIER"] == "clever-clusterd"
        # Both are Secondary after boot: the simulator keeps their loop devices read-only.
        assert n.sim.state()["role"] == "Secondary" and ro(n.parts.loop_device)
        assert n.vm_states() == {"plc1": False, "plc2": False, "tools": True}
        cfg = n.config.read_text()
        assert f'backend = "{"drbd84" if drbd == "8.4" else "drbd9"}"' in cfg
        assert n.drbdadm("role", "r0").stdout.strip() == ("Secondary/Secondary" if drbd == "8.4" else "Secondary")
        peer = lab.node(3 - n.index)
        assert f'host = "{peer.addrs.bmc}"' in cfg and f'device = "{n.parts.loop_device}"' in cfg
        assert 'interface = "eth0"' in cfg and n.parts.libvirt_uri in cfg
        if schema_has_machine_id():
            assert f'machine_id = "{n.parts.machine_id}"' in cfg
        # The peer's fence device reports this node's machine id, reached from the peer's namespace.
        r = lab.ipmi(peer.index, n.index, "mc", "guid")
        assert r.returncode == 0, r.stderr
        assert n.parts.machine_id.lower() in r.stdout.lower()
    assert lab.ipmi(1, 2, "chassis", "power", "status").stdout.strip() == "Chassis Power is on"


def test_a_handover_through_the_real_parts_is_logged_and_clean(make_nodelab: Callable[..., NodeLab]) -> None:
    lab = make_nodelab(maintenance=True)  # resources driven by hand here: the daemons only observe
    lab.wait_connected()
    n1, n2 = lab.node(1), lab.node(2)
    start = lab.mark("handover test starts")
    assert n1.drbdadm("primary", "r0").returncode == 0
    assert not ro(n1.parts.loop_device) and ro(n2.parts.loop_device)
    assert n1.run("mount", n1.parts.loop_device, str(n1.parts.mountpoint)).returncode == 0
    acked = [n1.write()["id"] for _ in range(3)]
    save = n1.parts.mountpoint / ".clever-save"
    assert n1.run("mkdir", "-p", str(save)).returncode == 0
    with n1.libvirt() as c:
        dom = c.lookupByName("plc1")
        dom.create()
        dom.save(str(save / "plc1.img"))  # written by libvirtd: it sees the node's mount
    assert n1.run("umount", str(n1.parts.mountpoint)).returncode == 0
    assert n1.drbdadm("secondary", "r0").returncode == 0
    assert n2.drbdadm("primary", "r0").returncode == 0
    assert n2.run("mount", n2.parts.loop_device, str(n2.parts.mountpoint)).returncode == 0
    with n2.libvirt() as c:
        c.restore(str(n2.parts.mountpoint / ".clever-save" / "plc1.img"))
    assert n2.vm_states()["plc1"] is True and n1.vm_states()["plc1"] is False

    def node1_steps(recs: list[tr.Record]) -> list[tuple[str, object]]:
        return [(r.kind, r.value) for r in recs if r.node == "node1" and r.kind in ("role", "mount", "vm") and r.get("event") != "at boot"]

    def logged() -> list[tr.Record] | None:
        # The keepers write VM events from their own processes: wait for all of them.
        recs = lab.records()
        done = len(node1_steps(recs)) >= 6 and of(recs, "node2", "vm", "active") and of(recs, "node2", "mount", "mounted")
        return recs if done else None

    recs = wait_for(logged, 10, "both nodes' transitions in the log")
    steps = node1_steps(recs)
    # Role and mount records are written by the process that makes the change, in order. A VM event
    # is stamped when the node's keeper receives it from libvirt, which on a loaded machine can be
    # after the unmount that followed the save: only the VM's own order is fixed.
    assert [x for x in steps if x[0] != "vm"] == [("role", "Primary"), ("mount", "mounted"), ("mount", "unmounted"), ("role", "Secondary")]
    assert [x for x in steps if x[0] == "vm"] == [("vm", "active"), ("vm", "inactive")]
    ivs = tr.intervals(recs)
    first = [i for i in ivs if i.node == "node1"]
    second = [i for i in ivs if i.node == "node2"]
    assert len(first) == 3 and all(i.end is not None for i in first)
    assert {i.kind for i in second} == {"role", "mount", "vm"} and all(i.end is None for i in second)
    assert max(i.end for i in first if i.end is not None) <= min(i.start for i in second)
    promo = of(recs, "node2", "role", "Primary")[0]
    assert all(w in tr.WriteSet(promo.get("held")) for w in acked)
    assert lab.wait_record(lambda r: r.node == "node1" and r.kind == "role" and r.t > start, 5).value == "Primary"
    held = lab.active()
    assert held["node1"] == [] and held["node2"][0] == "mount " + str(of(recs, "node2", "mount", "mounted")[0].get("mount_id"))
    assert held["node2"][1:] == ["role r0", "vm plc1"]
    lab.check()


def test_a_synthetic_double_primary_is_caught_with_both_intervals(make_nodelab: Callable[..., NodeLab]) -> None:
    lab = make_nodelab(maintenance=True)  # resources driven by hand here: the daemons only observe
    lab.wait_connected()
    n1, n2 = lab.node(1), lab.node(2)
    for n in (n1, n2):
        assert n.drbdadm("disconnect", "r0").returncode == 0
    assert n1.drbdadm("primary", "--force", "r0").returncode == 0
    w = n1.write()
    assert w["ok"] and not w["replicated"]
    assert n2.drbdadm("primary", "--force", "r0").returncode == 0
    with pytest.raises(AssertionError) as caught:
        lab.check()
    msg = str(caught.value)
    overlap = next(line for line in msg.splitlines() if line.startswith("two active:"))
    assert re.search(r"node1 DRBD Primary r0 \[[\d.]+, open\) overlaps node2 DRBD Primary r0 \[[\d.]+, open\)", overlap), overlap
    assert f"write {w['id']} acknowledged by node1" in msg and "is missing on node2" in msg


def test_bmc_power_off_downs_the_links_before_the_processes_die_and_power_on_boots_the_node(make_nodelab: Callable[..., NodeLab]) -> None:
    lab = make_nodelab(maintenance=True)  # resources driven by hand here: the daemons only observe
    lab.wait_connected()
    n1, n2 = lab.node(1), lab.node(2)
    assert n1.drbdadm("primary", "r0").returncode == 0
    assert n2.daemon is not None
    old_daemon = n2.daemon.pid

    r = lab.ipmi(1, 2, "chassis", "power", "off")  # as node1's fence agent would
    assert r.returncode == 0, r.stderr
    assert lab.ipmi(1, 2, "chassis", "power", "status").stdout.strip() == "Chassis Power is off"
    assert n2.pids() == []
    assert "NO-CARRIER" in lab.netlab.run(n1.ns, "ip", "link", "show", "hb0").stdout
    n1.sim.wait(lambda s: s["conn"] != "Connected", 10, "node1 losing its peer")

    recs = lab.records()
    (down,) = of(recs, "node2", "power", "links_down")
    (off,) = of(recs, "node2", "power", "off")
    exits = of(recs, "node2", "exit")
    assert {e.value for e in exits} == NODE_PROCESSES
    assert all(down.t < e.t <= off.t for e in exits), tr.timeline(recs, kinds=("power", "exit"))
    # With the links down first, node1 hears no FIN or RST from node2's dying simulator: it
    # notices only when DRBD's ping times out (ping-int 1 s + ping-timeout 0.5 s, pings every 0.25 s).
    lost = next(r for r in of(recs, "node1", "conn") if r.t > down.t)
    assert lost.value in ("NetworkFailure", "Unconnected", "Connecting")
    assert lost.t - down.t >= 1.0, tr.timeline(recs)

    r = lab.ipmi(1, 2, "chassis", "power", "on")
    assert r.returncode == 0, r.stderr
    assert lab.ipmi(1, 2, "chassis", "power", "status").stdout.strip() == "Chassis Power is on"
    wait_for(lambda: n2.daemon is not None and n2.daemon.pid != old_daemon and n2.daemon.alive(), 30, "node2's new daemon")
    n2.wait_daemon()
    assert n2.status()["node"] == "node2"
    lab.wait_connected()
    assert n2.vm_states() == {"plc1": False, "plc2": False, "tools": True}
    assert n2.sim.state()["role"] == "Secondary" and ro(n2.parts.loop_device)
    assert set(n2.pids()).isdisjoint(e.get("pid") for e in exits)
    lab.check()


def test_a_bmc_that_dies_with_its_node_comes_back_with_the_power(make_nodelab: Callable[..., NodeLab]) -> None:
    lab = make_nodelab(bmc_dies_with_node=(2,), daemons=False)
    # A power off through the BMC (a fence) leaves the BMC up: it has standby power.
    assert lab.ipmi(1, 2, "chassis", "power", "off").returncode == 0
    assert lab.bmc_alive(2)
    assert lab.ipmi(1, 2, "chassis", "power", "status").stdout.strip() == "Chassis Power is off"
    lab.power_on(2)
    # A power loss takes this BMC with it: nobody can confirm the node is off.
    lab.power_off(2)
    assert not lab.bmc_alive(2) and lab.node(2).pids() == []
    r = lab.ipmi(1, 2, "chassis", "power", "status", retries=1)
    assert r.returncode != 0 and "Chassis Power" not in r.stdout
    assert lab.ipmi(1, 1, "chassis", "power", "status").stdout.strip() == "Chassis Power is on"  # node1's BMC still answers
    lab.power_on(2)
    assert lab.bmc_alive(2)
    assert lab.ipmi(1, 2, "chassis", "power", "status").stdout.strip() == "Chassis Power is on"
    lab.wait_connected()
    recs = lab.records()
    assert [r.get("reason") for r in of(recs, "node2", "bmc", "down")] == ["dies with its node"]


def test_daemon_faults_and_a_clean_shutdown(make_nodelab: Callable[..., NodeLab]) -> None:
    lab = make_nodelab(maintenance=True)  # resources driven by hand here: the daemons only observe
    n2 = lab.node(2)
    assert n2.daemon is not None
    n2.hang_daemon()
    pid = n2.daemon.pid
    wait_for(lambda: Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "T", 5, "the daemon stopped")
    with pytest.raises(DaemonUnreachable):  # a stopped daemon does not answer
        n2.control("ping", timeout=0.5)
    n2.resume_daemon()
    n2.wait_daemon()
    n2.kill_daemon()
    wait_for(lambda: any(r.value == "daemon" for r in of(lab.records(), "node2", "exit")), 10, "the daemon's exit")
    assert n2.sim.alive() and n2.vm_states()["tools"]  # the rest of the node lives on
    n2.start_daemon()
    lab.shutdown(2)
    assert n2.daemon is not None and n2.daemon.proc is not None and n2.daemon.proc.returncode == 0  # SIGTERM, clean exit
    assert [r.get("via") for r in of(lab.records(), "node2", "power", "off")] == ["shutdown"]
    lab.power_on(2)
    assert n2.status()["node"] == "node2"


def _udp_gets_through(lab: NodeLab, src: int, dst: int, addr_of: Callable[[int], str], count: int = 20) -> int:
    with lab.netlab.enter(lab.node(dst).ns):
        rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        rx.bind((addr_of(dst), 0))
    with lab.netlab.enter(lab.node(src).ns):
        tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        rx.settimeout(0.3)
        for i in range(count):
            tx.sendto(b"%d" % i, (addr_of(dst), rx.getsockname()[1]))
        got = 0
        try:
            while got < count:
                rx.recv(100)
                got += 1
        except TimeoutError:
            pass
        return got
    finally:
        rx.close()
        tx.close()


def test_network_faults_cut_what_they_say(make_nodelab: Callable[..., NodeLab]) -> None:
    lab = make_nodelab(daemons=False)
    hb1 = lambda i: lab.node(i).addrs.hb1  # noqa: E731
    lan = lambda i: lab.node(i).addrs.lan  # noqa: E731
    assert _udp_gets_through(lab, 1, 2, hb1) == 20
    lab.net.cut("hb1", one_way_from=1)
    assert _udp_gets_through(lab, 1, 2, hb1) == 0 and _udp_gets_through(lab, 2, 1, hb1) == 20
    lab.net.heal("hb1")
    lab.net.cut("hb1")
    assert _udp_gets_through(lab, 1, 2, hb1) == 0 and _udp_gets_through(lab, 2, 1, hb1) == 0
    lab.net.heal("hb1")
    assert _udp_gets_through(lab, 2, 1, hb1) == 20
    lab.net.cut("lan", one_way_from=2)
    assert _udp_gets_through(lab, 2, 1, lan) == 0 and _udp_gets_through(lab, 1, 2, lan) == 20
    lab.net.heal("lan")
    gw, bmc2 = lab.topo.gw_addr, lab.node(2).addrs.bmc
    lab.net.cut_gateway(1)
    assert not lab.netlab.reachable(lab.node(1).ns, gw) and lab.netlab.reachable(lab.node(1).ns, bmc2)
    assert _udp_gets_through(lab, 1, 2, lan) == 20 and lab.netlab.reachable(lab.node(2).ns, gw)
    lab.net.heal_gateway(1)
    assert lab.netlab.reachable(lab.node(1).ns, gw)
    lab.net.loss("hb1", 50)
    got = _udp_gets_through(lab, 1, 2, hb1, count=200)
    assert 40 < got < 160, got  # 50 % each way on node1's end: about half of what node1 sends
    lab.net.heal("hb1")
    lab.net.link_down("hb1", node=2)
    assert "NO-CARRIER" in lab.netlab.run(lab.node(1).ns, "ip", "link", "show", "hb1").stdout
    assert _udp_gets_through(lab, 1, 2, hb1) == 0
    lab.net.link_up("hb1", node=2)
    wait_for(lambda: "NO-CARRIER" not in lab.netlab.run(lab.node(1).ns, "ip", "link", "show", "hb1").stdout, 5, "carrier")
    lab.net.bursts(("hb0", "hb1"), length=0.05, gap=0.05, count=3).wait(10)
    cuts = [r.value for r in lab.records() if r.kind == "fault" and r.value in ("cut hb0", "heal hb0")]
    assert cuts == ["cut hb0", "heal hb0"] * 3
    # Everything healed carries traffic again (the neighbour entry that failed while hb1 was down is
    # resolved anew first: on a loaded machine the first round can miss it).
    wait_for(lambda: _udp_gets_through(lab, 1, 2, hb1) == 20, 10, "hb1 to carry all 20 datagrams again")


def test_close_leaves_nothing_even_after_a_failure(tmp_path: Path) -> None:
    require_root()
    lab = NodeLab(tmp_path / "logs")
    with pytest.raises(RuntimeError, match="the scenario failed"), lab:
        n1 = lab.node(1)
        lab.wait_connected()
        assert n1.drbdadm("primary", "r0").returncode == 0
        assert n1.run("mount", n1.parts.loop_device, str(n1.parts.mountpoint)).returncode == 0
        with n1.libvirt() as c:
            c.lookupByName("plc2").create()
        lab.net.cut("hb1")
        pids = [p for n in lab.nodes for p in n.pids()]
        assert len(pids) >= 10
        raise RuntimeError("the scenario failed")
    assert lab.leftovers() == []  # namespaces, processes (by PID and start time), loop devices, mounts, directories
    kept = tmp_path / "logs"
    assert (kept / "node1" / "config.toml").exists() and (kept / "transitions" / "harness.jsonl").exists()
    recs = tr.load(kept / "transitions")
    # The mount's interval is closed in the log: by the holder's death ("mount namespace gone") or, when
    # the watcher's scan sees the mount table change first while the namespace dies, by that scan.
    assert of(recs, "node1", "mount", "unmounted")[-1].get("reason") in ("mount namespace gone", None)
    assert all(i.end is not None for i in tr.intervals(recs) if i.kind == "mount")
    assert json.loads((kept / "transitions" / "harness.jsonl").read_text().splitlines()[-1])["value"] == "closed"


def test_metrics_are_read_inside_the_node(make_nodelab: Callable[..., NodeLab]) -> None:
    """The metrics helper reaches the node's 127.0.0.1 (its own namespace) and parses with prometheus-client."""
    lab = make_nodelab(daemons=False)
    n = lab.node(2)
    code = ("import time, prometheus_client as p; c = p.Counter('clever_probe', 'probe', ['node']); c.labels('node2').inc(3); "
            f"p.start_http_server({nodeconfig.METRICS_PORT}, addr='127.0.0.1'); time.sleep(120)")
    exporter = subprocess.Popen([*n.prefix(), sys.executable, "-c", code], start_new_session=True)
    lab.track(exporter.pid, "exporter", n.name)
    try:
        m = wait_for(lambda: _metrics_or_none(n), 20, "the exporter")
        assert m['clever_probe_total{node="node2"}'] == 3.0
        with pytest.raises(OSError):
            lab.node(1).metrics_text(timeout=1)  # node1's 127.0.0.1 is another one
    finally:
        exporter.kill()
        exporter.wait(10)


def _metrics_or_none(n: Any) -> dict[str, float] | None:
    try:
        return n.metrics()  # type: ignore[no-any-return]
    except OSError:
        return None


def test_stale_lab_directories_of_dead_processes_are_removed(tmp_path: Path) -> None:
    require_root()
    dead = 2**22 + 4242  # above pid_max: never alive
    d = Path(tempfile.mkdtemp(prefix=f"ccnl{dead}-", dir=tmp_path))
    img = d / "drbd" / "replicated.img"
    img.parent.mkdir()
    with open(img, "wb") as f:
        f.truncate(1 << 20)
    loop = subprocess.run(["losetup", "-f", "--show", str(img)], capture_output=True, text=True, check=True).stdout.strip()
    try:
        assert cleanup_stale(tmp_path) == [d]
        assert not d.exists()
        assert str(img) not in subprocess.run(["losetup", "-n", "-l", "-O", "NAME,BACK-FILE"], capture_output=True, text=True).stdout
    finally:
        subprocess.run(["losetup", "-d", loop], capture_output=True, check=False)


def test_a_lab_never_holds_on_to_the_hosts_loop_mounts(tmp_path: Path, make_nodelab: Callable[..., NodeLab]) -> None:
    """Another test's loop device, mounted on the host while the lab starts, is free once that test unmounts it.

    Every new mount namespace copies the host's mounts; without dropping them
    the lab's holders and BMCs would keep that device busy.
    """
    img, mnt = tmp_path / "other.img", tmp_path / "other"
    with open(img, "wb") as f:
        f.truncate(16 << 20)
    subprocess.run(["mkfs.ext4", "-q", str(img)], check=True)
    loop = subprocess.run(["losetup", "-f", "--show", str(img)], capture_output=True, text=True, check=True).stdout.strip()
    try:
        mnt.mkdir()
        subprocess.run(["mount", loop, str(mnt)], check=True)
        try:
            lab = make_nodelab(daemons=False)
            lab.power_off(2)
            lab.power_on(2)
        finally:
            subprocess.run(["umount", str(mnt)], check=True)
        fd = os.open(loop, os.O_RDONLY | os.O_EXCL)  # EBUSY if a namespace of the lab still held a copy
        os.close(fd)
    finally:
        subprocess.run(["losetup", "-d", loop], capture_output=True, check=False)
