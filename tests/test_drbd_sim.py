"""The DRBD simulator keeps DRBD's rules and prints DRBD's formats.

Its output is read back with the production parsers, so a format drift on
either side fails here.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from clever_cluster.daemon.drbd import parse9, parse84
from clever_cluster.daemon.drbd import settings as s9
from clever_cluster.daemon.drbd.model import ConnState, ReplState, Role
from clever_cluster.sim import netns
from clever_cluster.sim.drbd.lab import DrbdPair, SimNode
from clever_cluster.sim.harness import wait_for

FAST = {"ping_int": 1.0, "ping_timeout": 0.5}


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[DrbdPair]:
    with DrbdPair(tmp_path / "drbd", "9", conf=FAST) as p:
        p.start()
        p.wait_connected()
        yield p


def handler(tmp_path: Path, name: str, code: int) -> str:
    script = tmp_path / f"{name}.sh"
    log = tmp_path / f"{name}.log"
    script.write_text(f'#!/bin/sh\necho "$DRBD_RESOURCE peer=$DRBD_PEER_NODE_ID$DRBD_PEER cstate=$DRBD_CSTATE" >> {log}\nexit {code}\n')
    script.chmod(0o755)
    return str(script)


def test_no_second_primary_while_connected(pair: DrbdPair) -> None:
    n1, n2 = pair.node(1), pair.node(2)
    assert n1.run("drbdadm", "primary", "r0").returncode == 0
    r = n2.run("drbdadm", "primary", "r0")
    assert r.returncode == 11
    assert r.stderr == ("r0: State change failed: (-1) Multiple primaries not allowed by config\n"
                        "Command 'drbdsetup primary r0' terminated with exit code 11\n")
    assert parse9.parse_role9(n2.run("drbdadm", "role", "r0").stdout) is Role.SECONDARY
    assert n1.write(64)["replicated"] is True
    st = parse9.parse_status_json(n1.run("drbdsetup", "status", "--json", "r0").stdout)[0]
    assert st.role is Role.PRIMARY and st.connections[0]["peer-role"] == "Secondary"


def test_outdate_refused_while_connected_then_outdated_cannot_promote(pair: DrbdPair) -> None:
    n1, n2 = pair.node(1), pair.node(2)
    r = n2.run("drbdadm", "outdate", "r0")
    assert r.returncode == 11 and "(-6) Refusing to be Outdated while Connected" in r.stderr
    assert n2.run("drbdadm", "disconnect", "r0").returncode == 0
    n1.wait(lambda s: s["conn"] == "Connecting", what="node1 sees the peer go")
    r = n1.run("drbdadm", "connect", "r0")
    assert r.returncode == 10 and "r0: Failure: (125) Device has a net-config (use disconnect first)" in r.stderr
    assert n2.run("drbdadm", "outdate", "r0").returncode == 0
    assert n2.run("drbdadm", "dstate", "r0").stdout == "Outdated/DUnknown\n"
    r = n2.run("drbdadm", "primary", "r0")
    assert r.returncode == 17 and "(-2) Need access to UpToDate data" in r.stderr
    assert n2.run("drbdadm", "connect", "r0").returncode == 0
    pair.wait_connected()  # same data generation: the Outdated disk is UpToDate again


def test_attach_without_peer_comes_up_consistent_and_cannot_promote_alone(tmp_path: Path) -> None:
    with DrbdPair(tmp_path / "a", "9", conf={**FAST, "fencing": "dont-care"}) as p:
        p.node(1).start()
        st = p.node(1).state()
        assert (st["disk"], st["conn"]) == ("Consistent", "Connecting")
        r = p.node(1).run("drbdadm", "primary", "r0")
        assert r.returncode == 17 and "(-2)" in r.stderr
        p.node(2).start()
        p.wait_connected()


def test_fencing_promotion_of_a_lone_node_needs_the_handler(tmp_path: Path) -> None:
    conf = {**FAST, "handlers": {"fence-peer": handler(tmp_path, "fence", 1)}}
    with DrbdPair(tmp_path / "a", "9", conf=conf) as p:
        p.node(1).start()
        r = p.node(1).run("drbdadm", "primary", "r0")
        assert r.returncode == 11 and "(-7) Refusing to be Primary while peer is not outdated" in r.stderr
        assert "r0 peer=1 cstate=Connecting" in (tmp_path / "fence.log").read_text()
        p.node(1).stop()
        ok = {**FAST, "handlers": {"fence-peer": handler(tmp_path, "fence7", 7)}}
    with DrbdPair(tmp_path / "b", "9", conf=ok) as p:
        p.node(1).start()
        assert p.node(1).run("drbdadm", "primary", "r0").returncode == 0
        assert p.node(1).state()["peer_disk"] == "Outdated"


def test_split_brain_detected_on_reconnect_and_manual_recovery(tmp_path: Path) -> None:
    with DrbdPair(tmp_path / "sb", "9", conf={**FAST, "fencing": "dont-care"}) as p:
        p.start()
        p.wait_connected()
        n1, n2 = p.node(1), p.node(2)
        events = subprocess.Popen([str(n1.drbdsetup), "events2", "r0"], stdout=subprocess.PIPE, text=True)
        try:
            assert n1.run("drbdadm", "disconnect", "r0").returncode == 0
            n2.wait(lambda s: s["conn"] == "Connecting")
            assert n2.run("drbdadm", "disconnect", "r0").returncode == 0
            for n in (n1, n2):
                assert n.run("drbdadm", "primary", "--force", "r0").returncode == 0
                assert n.write(16)["replicated"] is False
            for n in (n1, n2):
                assert n.run("drbdadm", "connect", "r0").returncode == 0
            for n in (n1, n2):
                n.wait(lambda s: s["conn"] == "StandAlone", what="StandAlone after split brain")
            assert n1.run("drbdadm", "cstate", "r0").stdout == "StandAlone\n"
        finally:
            events.terminate()
            out, _ = events.communicate(10)
        lines = out.splitlines()
        helpers = [ln for ln in lines if ln.startswith(("call helper", "response helper"))]
        assert [h.split("helper:")[1].split()[0] for h in helpers] == ["initial-split-brain"] * 2 + ["split-brain"] * 2
        assert lines.index(helpers[-1]) < max(i for i, ln in enumerate(lines) if "connection:StandAlone" in ln)
        # Recovery: node2 is the victim.
        assert n2.run("drbdadm", "secondary", "r0").returncode == 0
        assert n2.run("drbdadm", "disconnect", "r0").returncode == 0  # harmless on StandAlone
        assert n2.run("drbdadm", "connect", "--discard-my-data", "r0").returncode == 0
        assert n1.run("drbdadm", "disconnect", "r0").returncode == 0
        assert n1.run("drbdadm", "connect", "r0").returncode == 0
        n2.wait(lambda s: s["conn"] == "Connected" and s["disk"] == "UpToDate" and s["repl"] == "Established")
        assert n1.state()["role"] == "Primary" and n1.state()["meta"]["current"] & ~1 == n2.state()["meta"]["current"] & ~1


@pytest.mark.parametrize("who", ["secondary", "primary"])
def test_graceful_disconnect_outdates_the_secondary_and_freezes_nothing(tmp_path: Path, who: str) -> None:
    """DRBD's conn_try_disconnect with resource-and-stonith: whichever side disconnects gracefully, the
    Secondary's disk becomes Outdated, the Primary sees it so, keeps writing and runs no fence-peer handler."""
    conf = {**FAST, "handlers": {"fence-peer": handler(tmp_path, "fence", 1)}}
    with DrbdPair(tmp_path / "gd", "9", conf=conf) as p:
        p.start()
        p.wait_connected()
        n1, n2 = p.node(1), p.node(2)
        assert n1.run("drbdadm", "primary", "r0").returncode == 0
        assert (n2 if who == "secondary" else n1).run("drbdadm", "disconnect", "r0").returncode == 0
        n1.wait(lambda s: s["conn"] != "Connected" and s["peer_disk"] == "Outdated", what="node1 sees the peer Outdated")
        n2.wait(lambda s: s["disk"] == "Outdated", what="node2 outdated")
        assert "fencing" not in n1.state()["susp"]
        assert n1.write(4)["replicated"] is False  # not frozen
        assert not (tmp_path / "fence.log").exists()
        # An Outdated standby cannot promote, and reconnecting resyncs it.
        assert n2.run("drbdadm", "primary", "r0").returncode != 0
        for n in (n1, n2):
            if n.state()["conn"] == "StandAlone":
                assert n.run("drbdadm", "connect", "r0").returncode == 0
        n2.wait(lambda s: s["conn"] == "Connected" and s["disk"] == "UpToDate", what="node2 resynced")


def node1_writes_alone(p: DrbdPair, kib: int) -> tuple[SimNode, SimNode]:
    """Start the pair; node1 is promoted and writes ``kib`` KiB while node2 is disconnected."""
    p.start()
    p.wait_connected()
    n1, n2 = p.node(1), p.node(2)
    assert n1.run("drbdadm", "primary", "r0").returncode == 0
    assert n2.run("drbdadm", "disconnect", "r0").returncode == 0
    n1.wait(lambda s: s["conn"] == "Connecting")
    assert n1.write(kib)["replicated"] is False
    return n1, n2


def test_resync_with_progress_in_proc_drbd(tmp_path: Path) -> None:
    with DrbdPair(tmp_path / "rs", "8.4", conf={**FAST, "fencing": "dont-care", "resync_kib_per_s": 4096}) as p:
        n1, n2 = node1_writes_alone(p, 4096)
        dev = parse84.parse_proc_drbd(n1.proc_drbd.read_text()).devices[0]
        assert dev.cs == "WFConnection" and dev.out_of_sync_kib == 4096 and dev.role is Role.PRIMARY
        assert n2.run("drbdadm", "connect", "r0").returncode == 0
        seen: list[float] = []

        def progress() -> bool:
            d = parse84.parse_proc_drbd(n2.proc_drbd.read_text()).devices[0]
            if d.resync is not None:
                seen.append(d.resync.done_percent)
                assert d.replication is ReplState.SYNCTARGET and d.disk is not None and d.disk.value == "Inconsistent"
            return d.replication is ReplState.ESTABLISHED and d.disk is not None and d.disk.value == "UpToDate" and bool(seen)

        wait_for(progress, 15, "resync to finish", interval=0.02)
        assert seen and seen == sorted(seen) and seen[0] < 100.0
        assert parse84.parse_cstate84(n1.run("drbdadm", "cstate", "r0").stdout) == (ConnState.CONNECTED, ReplState.ESTABLISHED)


def test_84_formats_parse(tmp_path: Path) -> None:
    with DrbdPair(tmp_path / "f", "8.4", conf=FAST) as p:
        p.node(1).start()
        n1 = p.node(1)
        assert n1.run("drbdadm", "role", "r0").stdout == "Secondary/Unknown\n"
        assert n1.run("drbdadm", "disconnect", "r0").returncode == 0
        text = n1.proc_drbd.read_text()
        assert re.search(r"^ 0: cs:StandAlone ro:Secondary/Unknown ds:Consistent/DUnknown   r-----$", text, re.M), text
        assert parse84.parse_proc_drbd(text).api == 1
        assert parse84.parse_sh_minor(n1.run("drbdadm", "sh-minor", "r0").stdout) == 0
        gi = parse84.parse_gi84(n1.run("drbdadm", "show-gi", "r0").stdout)
        assert gi.current == "6B3A1F4C2D8E9A70"
        r = n1.run("drbdadm", "primary", "r0")
        assert r.returncode == 11 and r.stderr.startswith("0: State change failed: (-7)") and "drbdsetup-84 primary 0" in r.stderr
        assert n1.run("drbdsetup", "status", "--json", "r0").returncode == 20  # no JSON with an 8.4 kernel
        rep = s9.check(n1.run("drbdsetup", "show", "--show-defaults", "r0").stdout, n1.run("drbdadm", "dump", "r0").stdout,
                       "r0", drbd9=False)
        assert {i.setting for i in rep.issues} == {"handlers.fence-peer", "handlers.unfence-peer"}


def test_s9_settings_both_ways(tmp_path: Path) -> None:
    good = {**FAST, "handlers": {"fence-peer": "/usr/sbin/clevervm fence-peer", "unfence-peer": "/usr/sbin/clevervm unfence-peer"}}
    bad = {**FAST, "protocol": "A", "auto_promote": True, "allow_two_primaries": True, "become_primary_on": "node1"}
    for conf, expect in ((good, set()), (bad, {"net.protocol", "options.auto-promote", "net.allow-two-primaries",
                                               "startup.become-primary-on", "handlers.fence-peer", "handlers.unfence-peer"})):
        with DrbdPair(tmp_path / str(len(expect)), "9", conf=conf) as p:
            p.node(1).start()
            n = p.node(1)
            rep = s9.check(n.run("drbdsetup", "show", "--show-defaults", "r0").stdout, n.run("drbdadm", "dump", "r0").stdout,
                           "r0", drbd9=True)
            assert {i.setting for i in rep.issues} == expect


def test_unknown_resource_messages(pair: DrbdPair) -> None:
    r = pair.node(1).run("drbdadm", "role", "r9")
    assert (r.returncode, r.stderr) == (10, "'r9' not defined in your config (for this host).\n")
    r = pair.node(1).run("drbdsetup", "role", "r9")
    assert (r.returncode, r.stderr) == (10, "r9: No such resource\n")


def test_simulator_gone_is_exit_20(pair: DrbdPair) -> None:
    pair.node(2).kill()
    r = pair.node(2).run("drbdadm", "role", "r0")
    assert r.returncode == 20


# --------------------------------------------------------------------------- in namespaces

@pytest.fixture
def topo(netlab: netns.Lab) -> netns.TwoNodes:
    return netns.two_nodes(netlab)


def _getro(dev: str) -> str:
    return subprocess.run(["blockdev", "--getro", dev], capture_output=True, text=True, check=True).stdout.strip()


@pytest.mark.root
def test_link_cut_freezes_the_primary_and_the_handler_decides(topo: netns.TwoNodes, tmp_path: Path) -> None:
    conf = {**FAST, "handlers": {"fence-peer": handler(tmp_path, "fence", 4)}}
    with DrbdPair(tmp_path / "net", "9", topo=topo, conf=conf, node_conf={1: {}}) as p:
        p.start()
        p.wait_connected()
        n1, _n2 = p.node(1), p.node(2)
        assert n1.run("drbdadm", "primary", "r0").returncode == 0
        events = subprocess.Popen([str(n1.drbdsetup), "events2", "r0"], stdout=subprocess.PIPE, text=True)
        try:
            topo.lab.down(topo.n1.ns, "hb0")
            t_cut = time.monotonic()
            assert n1.state()["conn"] == "Connected"  # a silent peer is not noticed before the ping timeout
            n1.wait(lambda s: s["peer_disk"] == "Outdated" and not s["susp"], what="peer outdated, I/O resumed")
            assert time.monotonic() - t_cut >= 1.0
            assert n1.write(8)["ok"]
        finally:
            events.terminate()
            out, _ = events.communicate(10)
        assert "call helper name:r0 peer-node-id:1 conn-name:node2 helper:fence-peer" in out
        assert "response helper name:r0 peer-node-id:1 conn-name:node2 helper:fence-peer status:1024" in out
        susp = out.index("suspended:fencing")
        assert susp < out.index("helper:fence-peer") < out.rindex("suspended:no")
        assert "create path name:r0" in out and "change path" not in out  # no initial "exists path": first seen = create


@pytest.mark.root
def test_handler_failure_keeps_writes_frozen_until_resume_io(topo: netns.TwoNodes, tmp_path: Path) -> None:
    conf = {**FAST, "handlers": {"fence-peer": handler(tmp_path, "fence", 1)}}
    with DrbdPair(tmp_path / "net", "8.4", topo=topo, conf=conf) as p:
        p.start()
        p.wait_connected()
        n1 = p.node(1)
        assert n1.run("drbdadm", "primary", "r0").returncode == 0
        topo.lab.down(topo.n1.ns, "hb0")
        n1.wait(lambda s: s["conn"] == "Connecting" and "fencing" in s["susp"] and not s["helpers"])
        dev = parse84.parse_proc_drbd(n1.proc_drbd.read_text()).devices[0]
        assert dev.suspended and dev.cs == "WFConnection"
        assert n1.write(4, timeout=0.5) == {"ok": False, "frozen": True, "suspended": ["fencing"]}
        assert n1.run("drbdadm", "resume-io", "r0").returncode == 0
        assert n1.write(4)["ok"]


@pytest.mark.root
def test_loop_devices_follow_the_role_and_a_mounted_primary_cannot_demote(topo: netns.TwoNodes, tmp_path: Path) -> None:
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    with DrbdPair(tmp_path / "net", "9", topo=topo, conf=FAST, loop=True) as p:
        p.start()
        p.wait_connected()
        n1, n2 = p.node(1), p.node(2)
        d1, d2 = n1.loop_device, n2.loop_device
        assert d1 and d2 and _getro(d1) == "1" and _getro(d2) == "1"
        assert n1.run("drbdadm", "primary", "r0").returncode == 0
        assert _getro(d1) == "0" and _getro(d2) == "1"
        subprocess.run(["mount", d1, str(mnt)], check=True, capture_output=True)
        try:
            (mnt / "vm.img").write_bytes(os.urandom(4096))
            n1.wait(lambda s: s["open"], what="device open")
            r = n1.run("drbdadm", "secondary", "r0")
            assert r.returncode == 11 and "(-12) Device is held open by someone" in r.stderr
            rw = subprocess.run(["mount", "-o", "rw", d2, str(tmp_path)], capture_output=True, text=True, check=False)
            assert rw.returncode != 0  # the Secondary's device is read-only: no double mount
        finally:
            subprocess.run(["umount", str(mnt)], check=False)
        assert n1.run("drbdadm", "secondary", "r0").returncode == 0
        assert n2.run("drbdadm", "primary", "r0").returncode == 0
        subprocess.run(["mount", d2, str(mnt)], check=True, capture_output=True)
        try:
            assert (mnt / "vm.img").stat().st_size == 4096  # what node1 wrote is there (flushbufs on promote)
        finally:
            subprocess.run(["umount", str(mnt)], check=False)


@pytest.mark.root
def test_simulator_outlives_and_restarts_with_its_metadata(topo: netns.TwoNodes, tmp_path: Path) -> None:
    with DrbdPair(tmp_path / "net", "9", topo=topo, conf={**FAST, "fencing": "dont-care"}) as p:
        p.start()
        p.wait_connected()
        n1, n2 = p.node(1), p.node(2)
        assert n1.run("drbdadm", "primary", "r0").returncode == 0
        topo.lab.down(topo.n1.ns, "hb0")  # links first, then the power: a silent death
        n2.kill()
        n1.wait(lambda s: s["conn"] == "Connecting")
        n1.write(32)
        topo.lab.up(topo.n1.ns, "hb0")
        topo.lab.up(topo.n2.ns, "hb0")
        n2.start()
        assert n2.state()["disk"] in ("Consistent", "UpToDate", "Inconsistent")
        n2.wait(lambda s: s["conn"] == "Connected" and s["disk"] == "UpToDate" and s["repl"] == "Established")
        assert n1.state()["oos_kib"] == 0



def _keys_in_order(text: str) -> list[list[str]]:
    import json
    seen: list[list[str]] = []

    def hook(pairs: list[tuple[str, object]]) -> dict[str, object]:
        seen.append([k for k, _ in pairs])
        return dict(pairs)

    json.loads(text, object_pairs_hook=hook)
    return seen


def test_formats_follow_the_fixtures_key_for_key(pair: DrbdPair) -> None:
    from .drbd_fixtures import fixture_dir
    fix = fixture_dir()
    n1 = pair.node(1)
    # status --json: the same objects with the same keys in the same order as current drbd-utils.
    sim = _keys_in_order(n1.run("drbdsetup", "status", "--json", "r0").stdout)
    ref = _keys_in_order((fix / "status_json_9_quorum_lost_suspended_composed.json").read_text())
    assert set(map(tuple, sim)) == set(map(tuple, ref))
    assert '"connection-state": "Connected", \n' in n1.run("drbdsetup", "status", "--json", "r0").stdout
    # events2: every object line has the fixture's keys in the fixture's order.
    ref_lines = {ln.split()[1]: [kv.split(":")[0] for kv in ln.split()[2:]]
                 for ln in (fix / "events2_9_fence_peer_resource_and_stonith_composed.txt").read_text().splitlines()
                 if ln.startswith("exists ") and ln != "exists -"}
    for ln in n1.run("drbdsetup", "events2", "--now", "r0").stdout.splitlines():
        if ln != "exists -":
            assert [kv.split(":")[0] for kv in ln.split()[2:]] == ref_lines[ln.split()[1]], ln
    # status text: the layout of the fixture (resource, disk, peer, peer-disk).
    assert (n1.run("drbdadm", "status", "r0").stdout ==
            "r0 role:Secondary\n  disk:UpToDate\n  node2 role:Secondary\n    peer-disk:UpToDate\n\n")
    # get-gi: the 9 layout (4 UUIDs, 12 flags) parses; show-gi has the fixture's legend.
    assert n1.run("drbdadm", "show-gi", "r0").stdout.splitlines()[1:6] == (fix / "show_gi_9_composed.txt").read_text().splitlines()[1:6]


@pytest.mark.parametrize(("code", "peer_disk", "disk", "frozen"), [
    (3, "Inconsistent", "UpToDate", False),
    (4, "Outdated", "UpToDate", False),
    (5, "Outdated", "UpToDate", False),
    (6, "DUnknown", "Outdated", True),
    (7, "Outdated", "UpToDate", False),
    (0, "DUnknown", "UpToDate", True),
    (1, "DUnknown", "UpToDate", True),
])
def test_fence_peer_exit_codes_as_the_kernel_reads_them(tmp_path: Path, code: int, peer_disk: str, disk: str, frozen: bool) -> None:
    conf = {**FAST, "handlers": {"fence-peer": handler(tmp_path, "fence", code)}}
    with DrbdPair(tmp_path / "x", "9", conf=conf) as p:
        p.start()
        p.wait_connected()
        n1 = p.node(1)
        assert n1.run("drbdadm", "primary", "r0").returncode == 0
        p.node(2).kill()
        n1.wait(lambda s: s["conn"] != "Connected" and not s["helpers"] and (tmp_path / "fence.log").exists(),
                what="handler ran")
        st = n1.wait(lambda s: s["peer_disk"] == peer_disk and s["disk"] == disk, what=f"exit {code} applied")
        assert bool(st["susp"]) is frozen


@pytest.mark.parametrize("version", ["9", "8.4"])
def test_unfence_peer_is_a_drbd9_handler(tmp_path: Path, version: str) -> None:
    """DRBD 9 calls unfence-peer on the node that fenced once the peer is UpToDate again; an 8.4 kernel
    has no such helper (8.4 unfences with after-resync-target, on the sync target)."""
    conf = {**FAST, "handlers": {"fence-peer": handler(tmp_path, "fence", 4), "unfence-peer": handler(tmp_path, "unfence", 0)}}
    with DrbdPair(tmp_path / "u", version, conf=conf) as p:
        p.start()
        p.wait_connected()
        n1, n2 = p.node(1), p.node(2)
        assert n1.run("drbdadm", "primary", "r0").returncode == 0
        n2.disconnect_abruptly()  # a graceful disconnect would outdate node2 instead
        n1.wait(lambda s: s["peer_disk"] == "Outdated" and not s["susp"] and not s["helpers"], what="peer fenced (exit 4)")
        assert n2.run("drbdadm", "connect", "r0").returncode == 0
        p.wait_connected()
        n1.wait(lambda s: not s["helpers"] and not s["meta"]["peer_outdated"], what="peer UpToDate again")
        if version == "9":
            wait_for((tmp_path / "unfence.log").exists, 15, "the unfence-peer handler")
        else:
            assert not (tmp_path / "unfence.log").exists()


def test_a_granted_peer_promotion_blocks_our_own_until_the_peer_reports(tmp_path: Path) -> None:
    """Two promotions cross while Connected. node1 granted node2's request (DRBD 9: the two-phase commit
    is prepared); node2 has not reported the outcome yet when node1 is asked to promote, and node2, still
    finishing its own, answers node1's request yes. DRBD never lets both commit; node1 must refuse (-1)."""
    import json
    import socket
    import threading

    with DrbdPair(tmp_path / "x", "9", conf=FAST) as p:
        n1, n2 = p.node(1), p.node(2)
        srv = socket.create_server((n2.cfg["local_addr"], n2.cfg["port"]))
        srv.settimeout(15)
        n1.start()
        conn, _ = srv.accept()  # node1 (the lower node id) dials its twin: the test plays node2
        srv.close()
        conn.settimeout(0.2)
        buf = [b""]
        lock = threading.Lock()

        def send(**msg: object) -> None:
            with lock:
                conn.sendall(json.dumps(msg).encode() + b"\n")

        def recv(kind: str, until: Callable[[], bool] = lambda: False) -> dict[str, object] | None:
            """The next message of this kind (keeping the link alive once greeted); None once ``until()`` holds."""
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline:
                while b"\n" in buf[0]:
                    line, buf[0] = buf[0].split(b"\n", 1)
                    msg: dict[str, object] = json.loads(line)
                    if msg["t"] == kind:
                        return msg
                if until():
                    return None
                if kind != "hello":
                    send(t="ping")
                try:
                    buf[0] += conn.recv(65536)
                except TimeoutError:
                    pass
            raise AssertionError(f"no {kind} from node1")

        try:
            hello = recv("hello")
            assert hello is not None
            send(t="hello", node_id=1, name="node2", meta=hello["meta"], role="Secondary", disk="UpToDate", discard=False)
            n1.wait(lambda s: s["conn"] == "Connected" and s["peer_role"] == "Secondary", what="connected to the scripted twin")
            send(t="promote_req", id=1)
            ack = recv("promote_ack")
            assert ack is not None and ack["ok"] is True  # node2 may promote
            result: list[subprocess.CompletedProcess[str]] = []
            t = threading.Thread(target=lambda: result.append(n1.run("drbdadm", "primary", "r0")))
            t.start()
            req = recv("promote_req", until=lambda: not t.is_alive())
            if req is not None:
                send(t="promote_ack", id=req["id"], ok=True)  # node2's own promotion is still in flight
            t.join(20)
            send(t="state", role="Primary", disk="UpToDate")  # node2's promotion completed
            r = result[0]
            assert r.returncode == 11 and "(-1) Multiple primaries not allowed by config" in r.stderr
            assert n1.state()["role"] == "Secondary"
            send(t="state", role="Secondary", disk="UpToDate")  # node2 demoted: node1 may promote again
            n1.wait(lambda s: s["peer_role"] == "Secondary", what="node2 Secondary again")
            t = threading.Thread(target=lambda: result.append(n1.run("drbdadm", "primary", "r0")))
            t.start()
            req = recv("promote_req", until=lambda: not t.is_alive())
            assert req is not None
            send(t="promote_ack", id=req["id"], ok=True)
            t.join(20)
            assert result[1].returncode == 0 and n1.state()["role"] == "Primary"
        finally:
            conn.close()


def test_two_primaries_do_not_connect(tmp_path: Path) -> None:
    """DRBD 9 makes a new data generation only at the first write, so two nodes promoted apart that have
    not written yet still show the same UUIDs: no split brain, but DRBD still refuses to be Connected with
    two Primaries (allow-two-primaries no)."""
    with DrbdPair(tmp_path / "x", "9", conf={**FAST, "fencing": "dont-care"}) as p:
        p.start()
        p.wait_connected()
        n1, n2 = p.node(1), p.node(2)
        assert n2.run("drbdadm", "disconnect", "r0").returncode == 0
        n1.wait(lambda s: s["conn"] == "Connecting")
        for n in (n1, n2):
            assert n.run("drbdadm", "primary", "r0").returncode == 0
        seen = n2.log().count("handshake with")
        assert n2.run("drbdadm", "connect", "r0").returncode == 0
        wait_for(lambda: n2.log().count("handshake with") > seen, 15, "a handshake")
        for n in (n1, n2):
            st = n.state()
            assert (st["role"], st["conn"], st["peer_role"]) == ("Primary", "Connecting", "Unknown")
        assert n2.run("drbdadm", "secondary", "r0").returncode == 0
        p.wait_connected()  # one Primary: the same data generation connects without a resync
        assert n2.state()["peer_role"] == "Primary"


@pytest.mark.parametrize("version", ["9", "8.4"])
def test_a_reconnect_resumes_io_and_voids_the_running_handler(tmp_path: Path, version: str) -> None:
    """The peer comes back while the fence-peer handler of the first drop still runs: DRBD resumes I/O
    on the reconnect, and ignores that handler's exit code once the connection was re-established
    (8.4 conn_try_outdate_peer compares connect_cnt). The link drops again: the second freeze is
    released only by its own handler, which here fails."""
    gate, count = tmp_path / "gate", tmp_path / "count"
    script = tmp_path / "fence.sh"
    script.write_text(f"#!/bin/sh\nn=$(cat {count} 2>/dev/null || echo 0); n=$((n+1)); echo $n > {count}\n"
                      f"while [ ! -e {gate} ]; do sleep 0.05; done\n[ $n = 1 ] && exit 4\nexit 1\n")
    script.chmod(0o755)
    with DrbdPair(tmp_path / "x", version, conf={**FAST, "handlers": {"fence-peer": str(script)}}) as p:
        p.start()
        p.wait_connected()
        n1, n2 = p.node(1), p.node(2)
        assert n1.run("drbdadm", "primary", "r0").returncode == 0
        n2.disconnect_abruptly()  # a graceful disconnect would outdate node2 instead
        n1.wait(lambda s: "fencing" in s["susp"] and "fence-peer" in s["helpers"], what="first freeze, handler 1 running")
        assert n2.run("drbdadm", "connect", "r0").returncode == 0
        n1.wait(lambda s: s["conn"] == "Connected" and not s["susp"], what="I/O resumed on the reconnect")
        assert n1.write(4)["replicated"] is True
        n2.disconnect_abruptly()  # a graceful disconnect would outdate node2 instead
        n1.wait(lambda s: s["conn"] != "Connected" and "fencing" in s["susp"], what="second freeze")
        wait_for(lambda: count.exists() and count.read_text().strip() == "2", 15, "handler 2 started")
        gate.write_text("go")
        wait_for(lambda: "ignoring fence-peer exit code 4" in n1.log() and "helper broken, returned 1" in n1.log(), 15,
                 "handler 1 ignored, handler 2 obeyed")
        st = n1.state()
        assert (st["susp"], st["peer_disk"]) == (["fencing"], "DUnknown")


def test_writes_fail_without_uptodate_data(tmp_path: Path) -> None:
    """A Primary promoted on its Inconsistent disk while Connected (DRBD allows it: reads come from the
    UpToDate peer) that then loses the peer has no UpToDate data left: DRBD fails the writes
    (on-no-data-accessible io-error, the default); they must not be acknowledged."""
    with DrbdPair(tmp_path / "x", "9", conf={**FAST, "fencing": "dont-care", "resync_kib_per_s": 64}) as p:
        n1, n2 = node1_writes_alone(p, 4096)
        assert n1.run("drbdadm", "secondary", "r0").returncode == 0
        assert n2.run("drbdadm", "connect", "r0").returncode == 0
        n2.wait(lambda s: s["repl"] == "SyncTarget" and s["disk"] == "Inconsistent", what="node2 SyncTarget")
        assert n2.run("drbdadm", "primary", "r0").returncode == 0
        assert n2.write(4)["replicated"] is True
        assert n1.run("drbdadm", "disconnect", "r0").returncode == 0
        n2.wait(lambda s: s["conn"] != "Connected", what="node2 lost its sync source")
        r = n2.write(4)
        assert not r["ok"] and "no UpToDate data" in r["error"]


@pytest.mark.root
def test_closing_the_pair_leaves_its_loop_devices_writable(tmp_path: Path) -> None:
    """The simulator write-protects a Secondary's loop device (BLKROSET); that flag stays on /dev/loopN after
    losetup -d, so the next test on this machine to get that device would mount it read-only."""
    with DrbdPair(tmp_path / "ro", "9", conf=FAST, loop=True) as p:
        p.start()
        p.wait_connected()
        devices = list(p.loops)
        assert devices and all(_getro(d) == "1" for d in devices)  # both Secondary
    assert [_getro(d) for d in devices] == ["0"] * len(devices)
