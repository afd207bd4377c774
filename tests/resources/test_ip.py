"""The floating IP in network namespaces: three hosts on one bridge (this node, the old holder
of the address, and a client whose neighbour table shows who it thinks holds the address)."""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import re
from collections.abc import Awaitable, Callable
from typing import TypeVar

import pytest

from clever_cluster.daemon.config import IpConfig
from clever_cluster.daemon.resources.base import ResourceError, StartRequest, StopRequest
from clever_cluster.daemon.resources.ip import FloatingIp
from clever_cluster.sim import netns
from clever_cluster.sim.harness import wait_for

pytestmark = pytest.mark.root

T = TypeVar("T")
FLOATING = "10.77.0.50"


@dataclasses.dataclass
class Lan:
    lab: netns.Lab
    node: str  # takes the address over
    old: str  # held it before
    client: str  # talks to it

    def mac(self, ns: str) -> str:
        out = self.lab.run(ns, "ip", "-o", "link", "show", "dev", "eth0").stdout
        m = re.search(r"link/ether ([0-9a-f:]{17})", out)
        assert m, out
        return m.group(1)

    def neigh(self, ns: str, addr: str) -> str:
        return self.lab.run(ns, "ip", "neigh", "show", addr, "dev", "eth0").stdout.strip()

    def has_addr(self, ns: str, cidr: str) -> bool:
        return f"inet {cidr} " in self.lab.run(ns, "ip", "-o", "addr", "show", "dev", "eth0").stdout


@pytest.fixture
def lan(netlab: netns.Lab) -> Lan:
    node, old, client, sw = netlab.ns("node"), netlab.ns("old"), netlab.ns("client"), netlab.ns("sw")
    netlab.bridge(sw, "br0")
    for i, ns in enumerate((node, old, client), start=1):
        netlab.veth(ns, "eth0", sw, f"p{i}")
        netlab.attach(sw, f"p{i}", "br0")
        netlab.addr(ns, "eth0", f"10.77.0.{i}/24")
    return Lan(netlab, node, old, client)


def run_in(ns: str, fn: Callable[[], Awaitable[T]]) -> T:
    """Run a coroutine with this thread (and the worker threads it spawns) in ``ns``."""
    with netns.enter_netns(ns):
        return asyncio.run(fn())  # type: ignore[arg-type]


class Ctx:
    def __init__(self, takeover: str) -> None:
        self.notes: list[str] = []
        self.run_id = 1
        self.start = StartRequest(token="t", takeover=takeover)  # type: ignore[arg-type]
        self.stop = StopRequest(token=None)

    def check_gate(self) -> None:
        pass

    def note(self, text: str) -> None:
        self.notes.append(text)

    def fail(self, resource: str, reason: str, vm: str | None = None) -> None:
        raise AssertionError("not expected")


def _ip(**kw: object) -> FloatingIp:
    return FloatingIp(IpConfig(address=ipaddress.ip_interface(f"{FLOATING}/24"), interface="eth0", **kw))  # type: ignore[arg-type]


def test_add_announce_and_remove(lan: Lan) -> None:
    node_mac, old_mac = lan.mac(lan.node), lan.mac(lan.old)
    # The client has the old holder's MAC cached for the address (as after years of service).
    lan.lab.run(lan.old, "ip", "addr", "add", f"{FLOATING}/24", "dev", "eth0")
    assert lan.lab.reachable(lan.client, FLOATING)
    assert old_mac in lan.neigh(lan.client, FLOATING)
    lan.lab.run(lan.old, "ip", "addr", "del", f"{FLOATING}/24", "dev", "eth0")

    # Without gratuitous ARP the client keeps the old MAC...
    ctx = Ctx("cold_start")
    silent = _ip(arp_count=0)
    run_in(lan.node, lambda: silent.start(ctx))
    assert lan.has_addr(lan.node, f"{FLOATING}/24")
    assert old_mac in lan.neigh(lan.client, FLOATING)
    run_in(lan.node, lambda: silent.stop(ctx))
    assert not lan.has_addr(lan.node, f"{FLOATING}/24")

    # ...with it, the client's neighbour table points at this node at once.
    ip = _ip(arp_count=3, arp_interval=0.05)
    run_in(lan.node, lambda: ip.start(ctx))
    assert lan.has_addr(lan.node, f"{FLOATING}/24") and "3 gratuitous ARP sent" in ctx.notes
    wait_for(lambda: node_mac in lan.neigh(lan.client, FLOATING), 5, "the client's neighbour entry to move")
    assert run_in(lan.node, lambda: asyncio.to_thread(ip.present))
    run_in(lan.node, lambda: ip.start(ctx))  # idempotent
    assert ctx.notes[-1].endswith("already on eth0")
    run_in(lan.node, lambda: ip.stop(ctx))
    assert not lan.has_addr(lan.node, f"{FLOATING}/24")
    run_in(lan.node, lambda: ip.stop(ctx))  # idempotent
    assert ctx.notes[-1].endswith("not on eth0")


def test_takeover_refused_while_another_host_answers(lan: Lan) -> None:
    old_mac = lan.mac(lan.old)
    lan.lab.run(lan.old, "ip", "addr", "add", f"{FLOATING}/24", "dev", "eth0")  # the old node is not off after all
    ip = _ip(conflict_timeout=0.5)
    with pytest.raises(ResourceError, match=rf"{FLOATING} still answers ARP from {old_mac} on eth0"):
        run_in(lan.node, lambda: ip.start(Ctx("failover")))
    assert not lan.has_addr(lan.node, f"{FLOATING}/24")
    # Once it is really gone, the same takeover goes through.
    lan.lab.run(lan.old, "ip", "addr", "del", f"{FLOATING}/24", "dev", "eth0")
    ctx = Ctx("failover")
    run_in(lan.node, lambda: ip.start(ctx))
    assert lan.has_addr(lan.node, f"{FLOATING}/24")
    assert any("no answer to the conflict probe" in n for n in ctx.notes)


def test_missing_or_down_interface_is_a_clear_failure(lan: Lan) -> None:
    ip = FloatingIp(IpConfig(address=ipaddress.ip_interface(f"{FLOATING}/24"), interface="bond7"))
    with pytest.raises(ResourceError, match=r"interface bond7 \(ip.interface\) does not exist"):
        run_in(lan.node, lambda: ip.start(Ctx("cold_start")))
    lan.lab.down(lan.node, "eth0")
    with pytest.raises(ResourceError, match="eth0 is down"):
        run_in(lan.node, lambda: _ip().start(Ctx("cold_start")))


FLOATING6 = "fd00:77::50"


def _ip6(**kw: object) -> FloatingIp:
    return FloatingIp(IpConfig(address=ipaddress.ip_interface(f"{FLOATING6}/64"), interface="eth0", **kw))  # type: ignore[arg-type]


def test_ipv6_add_advertise_and_remove(lan: Lan) -> None:
    node_mac, old_mac = lan.mac(lan.node), lan.mac(lan.old)
    lan.lab.run(lan.client, "ip", "addr", "add", "fd00:77::3/64", "dev", "eth0", "nodad")
    lan.lab.run(lan.old, "ip", "addr", "add", f"{FLOATING6}/64", "dev", "eth0", "nodad")
    wait_for(lambda: lan.lab.reachable(lan.client, FLOATING6), 10, "the old holder to answer")
    assert old_mac in lan.neigh(lan.client, FLOATING6)
    lan.lab.run(lan.old, "ip", "addr", "del", f"{FLOATING6}/64", "dev", "eth0")

    ctx = Ctx("cold_start")
    ip = _ip6(arp_count=3, arp_interval=0.05)
    run_in(lan.node, lambda: ip.start(ctx))
    assert "3 neighbour advertisements sent" in ctx.notes
    assert "nodad" in lan.lab.run(lan.node, "ip", "-6", "-o", "addr", "show", "dev", "eth0").stdout  # usable at once
    wait_for(lambda: node_mac in lan.neigh(lan.client, FLOATING6), 5, "the client's neighbour entry to move")
    run_in(lan.node, lambda: ip.stop(ctx))
    assert FLOATING6 not in lan.lab.run(lan.node, "ip", "-6", "-o", "addr", "show", "dev", "eth0").stdout


def test_ipv6_takeover_refused_when_duplicate_address_detection_fails(lan: Lan) -> None:
    lan.lab.run(lan.old, "ip", "addr", "add", f"{FLOATING6}/64", "dev", "eth0", "nodad")
    with pytest.raises(ResourceError, match=r"failed duplicate address detection"):
        run_in(lan.node, lambda: _ip6().start(Ctx("failover")))
    assert FLOATING6 not in lan.lab.run(lan.node, "ip", "-6", "-o", "addr", "show", "dev", "eth0").stdout
    lan.lab.run(lan.old, "ip", "addr", "del", f"{FLOATING6}/64", "dev", "eth0")
    ctx = Ctx("failover")
    run_in(lan.node, lambda: _ip6().start(ctx))
    assert "duplicate address detection passed" in ctx.notes


@pytest.mark.parametrize("where", ["eth0", "lo"])
def test_stop_does_not_report_success_while_the_node_still_answers_for_the_address(lan: Lan, where: str) -> None:
    """Regression (red team): the address added by hand with another prefix (``ip addr add 10.77.0.50
    dev eth0`` means /32), or on another interface (Linux answers ARP for any local address), was
    left in place by the stop, which reported success: after a handover both nodes answered for it."""
    lan.lab.run(lan.node, "ip", "link", "set", "dev", "lo", "up")
    lan.lab.run(lan.node, "ip", "addr", "add", f"{FLOATING}/32", "dev", where)
    ip, ctx = _ip(arp_count=0), Ctx("cold_start")
    run_in(lan.node, lambda: ip.start(ctx))
    with pytest.raises(ResourceError, match=rf"{FLOATING}/32 is also on {where}.*not by clever-cluster"):
        run_in(lan.node, lambda: ip.stop(ctx))
    assert not lan.has_addr(lan.node, f"{FLOATING}/24")  # ours is gone ...
    assert lan.lab.reachable(lan.client, FLOATING)  # ... but the node still answers, and says so
    lan.lab.run(lan.node, "ip", "addr", "del", f"{FLOATING}/32", "dev", where)
    run_in(lan.node, lambda: ip.stop(ctx))
    assert not lan.lab.reachable(lan.client, FLOATING)


def test_ipv6_takeover_refused_while_another_host_answers_even_without_dad(lan: Lan) -> None:
    """Regression (red team): with duplicate address detection off on the interface (accept_dad=0,
    set by some distributions and cloud images), the kernel never checked the address, and the
    step noted "duplicate address detection passed" and took it while the old holder still answered."""
    lan.lab.run(lan.node, "sysctl", "-qw", "net.ipv6.conf.eth0.accept_dad=0")
    old_mac = lan.mac(lan.old)
    lan.lab.run(lan.old, "ip", "addr", "add", f"{FLOATING6}/64", "dev", "eth0", "nodad")
    with pytest.raises(ResourceError, match=rf"{FLOATING6} still answers neighbour solicitations from {old_mac} on eth0"):
        run_in(lan.node, lambda: _ip6().start(Ctx("failover")))
    assert FLOATING6 not in lan.lab.run(lan.node, "ip", "-6", "-o", "addr", "show", "dev", "eth0").stdout
    lan.lab.run(lan.old, "ip", "addr", "del", f"{FLOATING6}/64", "dev", "eth0")
    ctx = Ctx("failover")
    run_in(lan.node, lambda: _ip6().start(ctx))
    assert any("no answer to the conflict probe" in n for n in ctx.notes)
    assert FLOATING6 in lan.lab.run(lan.node, "ip", "-6", "-o", "addr", "show", "dev", "eth0").stdout
