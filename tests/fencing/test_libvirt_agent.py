"""The libvirt agent against libvirt's test driver (test:///default).

The test holds its own connection open: within one process every open
connection to test:///default shares the same state (reference/lab.md 2).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import libvirt
import pytest

from clever_cluster.fencing.libvirt_agent import LibvirtAgent, LibvirtParams
from clever_cluster.fencing.types import Deadline, Outcome, PowerState


@pytest.fixture
def conn() -> Iterator[Any]:
    c = libvirt.open("test:///default")
    try:
        yield c
    finally:
        c.close()


def agent(domain: str = "test") -> LibvirtAgent:
    return LibvirtAgent("virt-peer", LibvirtParams("test:///default", domain), timeout=10, poll_interval=0.05)


async def test_destroy_is_confirmed_by_shutoff(conn: Any) -> None:
    dom = conn.lookupByName("test")
    assert dom.state()[0] == libvirt.VIR_DOMAIN_RUNNING
    a = agent()
    assert await a.machine_id(Deadline.after(5)) == dom.UUIDString()
    r = await a.off(Deadline.after(10))
    assert r.confirmed and r.evidence[0] == "virDomainDestroy returned"
    assert dom.state()[0] == libvirt.VIR_DOMAIN_SHUTOFF
    on = await a.on(Deadline.after(10))
    assert on.ok and dom.state()[0] == libvirt.VIR_DOMAIN_RUNNING


async def test_paused_counts_as_on(conn: Any) -> None:
    dom = conn.lookupByName("test")
    dom.suspend()
    try:
        reading = await agent().status(Deadline.after(5))
        assert reading.state is PowerState.ON and "paused" in reading.detail
    finally:
        dom.resume()


async def test_unknown_domain_is_a_failure_never_off(conn: Any) -> None:
    a = agent("no-such-domain")
    r = await a.off(Deadline.after(5))
    assert r.outcome is Outcome.FAILED and "not found" in r.message
    reading = await a.status(Deadline.after(5))
    assert reading.state is PowerState.UNKNOWN
    assert not (await a.monitor(Deadline.after(5))).ok
