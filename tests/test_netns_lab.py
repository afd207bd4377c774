"""The namespace lab used by the network tests: real topology, real loss, full cleanup."""

from __future__ import annotations

import socket

import pytest

from clever_cluster.sim import netns
from tests.conftest import require_root

pytestmark = pytest.mark.root


def _ping(lab: netns.Lab, ns: str, addr: str) -> bool:
    return lab.reachable(ns, addr)


def test_two_nodes_topology_and_cleanup() -> None:
    require_root()
    lab = netns.Lab()
    try:
        t = netns.two_nodes(lab)
        assert _ping(lab, t.n1.ns, t.n2.hb0)
        assert _ping(lab, t.n1.ns, t.n2.hb1)
        assert _ping(lab, t.n1.ns, t.n2.lan)
        assert _ping(lab, t.n2.ns, t.gw_addr)
        lab.down(t.n1.ns, "hb0")
        assert not _ping(lab, t.n1.ns, t.n2.hb0)
        assert _ping(lab, t.n1.ns, t.n2.hb1)
        t.cut_lan_between_nodes()
        assert not _ping(lab, t.n1.ns, t.n2.lan)
        assert _ping(lab, t.n1.ns, t.gw_addr)
        t.heal_lan_between_nodes()
        assert _ping(lab, t.n1.ns, t.n2.lan)
        t.cut_uplink(2)
        assert not _ping(lab, t.n2.ns, t.gw_addr)
        assert _ping(lab, t.n1.ns, t.gw_addr)
        sleeper = lab.popen(t.n1.ns, ["sleep", "600"])
        names = set(lab.namespaces)
    finally:
        lab.close()
    assert sleeper.poll() is not None
    assert not names & set(netns.list_netns())


def test_enter_creates_sockets_in_the_namespace() -> None:
    require_root()
    with netns.Lab() as lab:
        t = netns.two_nodes(lab)
        with lab.enter(t.n2.ns):
            rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            rx.bind((t.n2.hb0, 0))
        port = rx.getsockname()[1]
        with lab.enter(t.n1.ns):
            tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        # Outside the block, the sockets still live in their namespaces.
        tx.sendto(b"hello", (t.n2.hb0, port))
        rx.settimeout(5)
        assert rx.recv(100) == b"hello"
        with pytest.raises(OSError):
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM).bind((t.n2.hb0, 0))  # not an address of the host
        rx.close()
        tx.close()


def test_loss_drops_a_share_of_frames() -> None:
    require_root()
    with netns.Lab() as lab:
        t = netns.two_nodes(lab)
        with lab.enter(t.n2.ns):
            rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            rx.bind((t.n2.hb0, 0))
        with lab.enter(t.n1.ns):
            tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        lab.loss(t.n1.ns, "hb0", 50, ingress=False)
        port = rx.getsockname()[1]
        rx.settimeout(0.05)
        n, got = 2000, 0
        for batch in range(n // 50):  # small batches so the receive buffer never overflows
            for i in range(50):
                tx.sendto(b"%d" % (batch * 50 + i), (t.n2.hb0, port))
            try:
                while True:
                    rx.recv(100)
                    got += 1
            except TimeoutError:
                pass
        assert 0.4 * n < got < 0.6 * n, got
        lab.clear_loss(t.n1.ns, "hb0")
        rx.settimeout(5)
        tx.sendto(b"x", (t.n2.hb0, port))
        assert rx.recv(100) == b"x"
        rx.close()
        tx.close()


def test_stale_lab_of_a_dead_process_is_removed() -> None:
    require_root()
    dead_pid = 2**22 + 12345  # above pid_max on this kernel's default, so never alive
    name = f"cc{dead_pid}_0_probe"
    netns._ip("netns", "add", name)
    try:
        assert name in netns.cleanup_stale()
        assert name not in netns.list_netns()
    finally:
        netns._ip("netns", "del", name, check=False)
