"""The cluster simulator's DRBD model against DRBD's rules (shared/reference/drbd.md):
where the model is more forgiving than DRBD, an unsafe or stuck policy passes the search."""

from __future__ import annotations

from clever_cluster.policy import Conn, Disk, Role
from clever_cluster.sim.cluster.drbd import PENDING, DataTree, DrbdPair


def _pair(connected: bool = True) -> DrbdPair:
    p = DrbdPair(("node1", "node2"), DataTree(), ping_timeout=2.0)
    if connected:
        p.update(0.0, path_ok=True)
        p.sync_views()
    assert all(n.conn is (Conn.CONNECTED if connected else Conn.CONNECTING) for n in p.n.values())
    return p


def test_a_disconnected_promotion_runs_fence_peer_and_needs_4_or_7() -> None:
    """SS_PRIMARY_NOP: with fencing, a Primary without a connection needs its peer outdated first."""
    for code, primary in ((1, False), (7, True), (4, True)):
        p = _pair(connected=False)
        assert p.promote("node1", force=False) == PENDING
        assert p.n["node1"].handler and p.n["node1"].role is Role.SECONDARY
        assert p.promote("node1", force=False) == PENDING       # drbdadm still waits
        p.handler_exit("node1", code)
        got = p.promote("node1", force=False)
        assert (got is None) is primary, (code, got)
        assert (p.n["node1"].role is Role.PRIMARY) is primary
        if not primary:
            assert got is not None and "(-7)" in got


def test_a_forced_promotion_goes_ahead_when_the_handler_fails() -> None:
    p = _pair(connected=False)
    p.n["node1"].disk = Disk.CONSISTENT
    assert p.promote("node1", force=True) == PENDING
    p.handler_exit("node1", 1)
    assert p.promote("node1", force=True) is None                # "Forced into split brain situation!"
    assert p.n["node1"].role is Role.PRIMARY and p.n["node1"].disk is Disk.UP_TO_DATE


def test_a_connected_or_outdated_peer_needs_no_handler() -> None:
    p = _pair()
    assert p.promote("node1", force=False) is None and not p.n["node1"].handler
    q = _pair(connected=False)
    q.n["node1"].peer_disk = Disk.OUTDATED
    assert q.promote("node1", force=False) is None and not q.n["node1"].handler


def test_a_clean_leave_outdates_the_leaving_secondary_only_next_to_a_primary() -> None:
    p = _pair()
    p.power_off("node2", clean=True)
    assert p.n["node2"].disk is Disk.UP_TO_DATE and p.n["node1"].peer_disk is Disk.UNKNOWN
    q = _pair()
    assert q.promote("node1", force=False) is None
    q.sync_views()
    q.power_off("node2", clean=True)
    assert q.n["node2"].disk is Disk.OUTDATED and q.n["node1"].peer_disk is Disk.OUTDATED
    assert not q.n["node1"].suspended and not q.n["node1"].handler
