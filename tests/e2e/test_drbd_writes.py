"""The DRBD simulator's part of the lab's checks: which writes each disk holds, transition records, disk failure."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from clever_cluster.daemon.drbd import parse9
from clever_cluster.sim.drbd.lab import DrbdPair
from clever_cluster.sim.nodelab import transitions as tr

FAST = {"ping_int": 1.0, "ping_timeout": 0.5}


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[DrbdPair]:
    (tmp_path / "log").mkdir()
    # No fencing here: these tests disconnect a Primary on purpose and need it to keep writing.
    with DrbdPair(tmp_path / "drbd", "9", conf={**FAST, "fencing": "dont-care"}, transitions=tmp_path / "log") as p:
        p.start()
        p.wait_connected()
        yield p


def logged(tmp_path: Path) -> list[tr.Record]:
    return tr.load(tmp_path / "log")


def test_replication_and_resync_decide_what_each_disk_holds(pair: DrbdPair, tmp_path: Path) -> None:
    n1, n2 = pair.node(1), pair.node(2)
    assert n1.run("drbdadm", "primary", "r0").returncode == 0
    a = n1.write()
    assert a["ok"] and a["replicated"]
    assert a["id"] in tr.WriteSet(n1.held()) and a["id"] in tr.WriteSet(n2.held())

    assert n1.run("drbdadm", "disconnect", "r0").returncode == 0
    b = n1.write()
    assert b["ok"] and not b["replicated"]
    assert b["id"] in tr.WriteSet(n1.held()) and b["id"] not in tr.WriteSet(n2.held())

    assert n1.run("drbdadm", "connect", "r0").returncode == 0
    pair.wait_connected()
    assert b["id"] in tr.WriteSet(n2.held())  # the resync brought it

    assert n1.run("drbdadm", "secondary", "r0").returncode == 0
    assert n2.run("drbdadm", "primary", "r0").returncode == 0
    recs = logged(tmp_path)
    assert tr.lost_writes(recs) == [] and tr.never_two_active(recs) == []
    acks = [r.get("id") for r in recs if r.kind == "write_ack"]
    assert acks == [a["id"], b["id"]]
    promo = [r for r in recs if r.kind == "role" and r.value == "Primary"]
    assert [r.node for r in promo] == ["node1", "node2"]
    assert b["id"] in tr.WriteSet(promo[1].get("held"))
    # The promotion is stamped no later than the simulator's own record of the peer's demotion.
    demoted = next(r for r in recs if r.node == "node1" and r.kind == "role" and r.value == "Secondary")
    assert demoted.t < promo[1].t


def test_a_promotion_that_misses_acknowledged_writes_is_caught(pair: DrbdPair, tmp_path: Path) -> None:
    n1, n2 = pair.node(1), pair.node(2)
    assert n1.run("drbdadm", "primary", "r0").returncode == 0
    for n in (n1, n2):
        assert n.run("drbdadm", "disconnect", "r0").returncode == 0
    b = n1.write()
    assert b["ok"] and not b["replicated"]
    assert n2.run("drbdadm", "primary", "--force", "r0").returncode == 0
    recs = logged(tmp_path)
    (lost,) = tr.lost_writes(recs)
    assert lost.write == b["id"] and lost.promotion.node == "node2"
    (overlap,) = tr.never_two_active(recs)
    assert {overlap.a.node, overlap.b.node} == {"node1", "node2"}


def test_disk_failure_detaches_and_io_goes_to_the_peer(pair: DrbdPair, tmp_path: Path) -> None:
    n1, n2 = pair.node(1), pair.node(2)
    assert n1.run("drbdadm", "primary", "r0").returncode == 0
    before = n1.write()
    v = n1.fail_disk()
    assert v["disk"] == "Diskless" and v["role"] == "Primary" and v["writes_held"] == 0
    n2.wait(lambda s: s["peer_disk"] == "Diskless", 5, "the peer sees the diskless node")
    st = parse9.parse_status_json(n1.run("drbdsetup", "status", "--json", "r0").stdout)[0]
    assert st.devices[0]["disk-state"] == "Diskless"
    after = n1.write()
    assert after["ok"] and after["replicated"]
    assert after["id"] in tr.WriteSet(n2.held()) and after["id"] not in tr.WriteSet(n1.held())
    assert before["id"] in tr.WriteSet(n2.held())
    disk = [r.value for r in logged(tmp_path) if r.node == "node1" and r.kind == "disk"]
    assert disk[-2:] == ["Failed", "Diskless"]

    # Without its peer a diskless Primary has no data at all.
    assert n2.run("drbdadm", "disconnect", "r0").returncode == 0
    n1.wait(lambda s: s["conn"] != "Connected", 10, "disconnected")
    assert n1.write(timeout=1.0) == {"ok": False, "error": "no access to data (diskless, no peer)"}

    # The failure lasts across a restart (a reboot does not repair a disk).
    assert n1.run("drbdadm", "secondary", "r0").returncode == 0
    n1.kill()
    n1.start()
    assert n1.state()["disk"] == "Diskless"
    assert n2.run("drbdadm", "connect", "r0").returncode == 0
    n1.wait(lambda s: s["conn"] == "Connected" and s["peer_disk"] == "UpToDate", 10, "reconnected to a healthy peer")
    assert n2.state()["peer_disk"] == "Diskless"
