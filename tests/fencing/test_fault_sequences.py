"""Fault sequences found by a red-team review of fencing/, each a regression
test for the fix that came with it.

Real parts wherever the behaviour can be produced: the pyghmi BMC emulator,
the real fence_ipmilan, sushy-tools, the fake stock agent script; the
in-process Redfish fake only for answers a real emulator cannot give.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from clever_cluster.fencing.coordinator import FenceCoordinator, FenceRequest, Phase
from clever_cluster.fencing.identity import IdentityBook, IdentityVerdict, Trust
from clever_cluster.fencing.journal import FenceJournal
from clever_cluster.fencing.types import Deadline, Episode, Outcome, PowerState

from .emulators import OWN_UUID, PEER_UUID
from .test_stock import ipmilan

EP = Episode("node2", 4, "boot-2", 1)


async def until(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    """Poll ``predicate`` on the event loop until it is truthy (a deadline, not a timing assertion)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        await asyncio.sleep(0.02)


class World:
    def __init__(self) -> None:
        self.heard = False

    def peer_heard(self) -> bool:
        return self.heard

    async def gate(self) -> bool:
        return True


def trusted(*agents: Any) -> IdentityBook:
    book = IdentityBook({a.name: a.describe() for a in agents})
    for a in agents:
        book.record(IdentityVerdict(a.name, Trust.VERIFIED, "verified in test", PEER_UUID, PEER_UUID))
    return book


def coordinator(tmp_path: Path, levels: list[list[Any]], world: World, **kw: Any) -> FenceCoordinator:
    return FenceCoordinator(node="node1", boot_id="boot-1", own_machine_id=OWN_UUID, target="node2", levels=levels,
                            journal=FenceJournal(tmp_path), identity=trusted(*[a for lvl in levels for a in lvl]),
                            gateway_gate=world.gate, peer_heard=world.peer_heard, peer_machine_id=lambda: PEER_UUID,
                            after="off", retry_backoff=0.05, retry_backoff_max=0.1, max_rounds=kw.pop("max_rounds", 1), **kw)


def req(episode: Episode = EP) -> FenceRequest:
    return FenceRequest(episode=episode, target_incarnation=episode.peer_incarnation, delay=0.0, reason="peer lost", requester="loop")


# --------------------------------------------------------------------------- a device action outlives its operation


def delayed_ipmilan(port: int) -> Any:
    """The real fence_ipmilan with its own `delay` option: it logs in, then waits before powering off."""
    a = ipmilan(port)
    a.params = dataclasses.replace(a.params, options={**a.params.options, "delay": "3"})
    return a


async def test_cancelled_fence_does_not_power_off_later(bmc_factory, tmp_path: Path) -> None:
    """cancel() (the loss episode closed) while fence_ipmilan waits before its power-off:
    the agent must be stopped, not left to shoot the peer on its own."""
    b = bmc_factory("immediate")
    dev = delayed_ipmilan(b.port)
    c = coordinator(tmp_path, [[dev]], World())
    t = asyncio.create_task(c.fence(req()))
    await until(lambda: dev.lock.locked(), 20, "fence_ipmilan to start")
    c.cancel("the peer was heard again")
    r = await asyncio.wait_for(t, 10)
    assert r.outcome is Outcome.CANCELLED and not r.confirmed
    await until(lambda: not dev.lock.locked(), 30, "the device to be free again")
    assert "power_off" not in b.names(), b.events()
    assert (await dev.status(Deadline.after(15))).state is PowerState.ON


async def test_peer_heard_during_a_device_action_stops_it_before_the_power_off(bmc_factory, tmp_path: Path) -> None:
    """The peer is heard again while fence_ipmilan is still before its power-off:
    the operation ends cancelled and the peer is not shot."""
    b = bmc_factory("immediate")
    dev = delayed_ipmilan(b.port)
    w = World()
    c = coordinator(tmp_path, [[dev]], w)
    t = asyncio.create_task(c.fence(req()))
    await until(lambda: dev.lock.locked(), 20, "fence_ipmilan to start")
    st = c.status()
    assert st is not None and st.phase is Phase.FENCING
    w.heard = True
    r = await asyncio.wait_for(t, 30)
    assert r.outcome is Outcome.CANCELLED and not r.confirmed and c.record_for(EP) is None
    await until(lambda: not dev.lock.locked(), 30, "the device to be free again")
    assert "power_off" not in b.names(), b.events()
