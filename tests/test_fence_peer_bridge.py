"""The fence-peer service on the real fencing coordinator (in-memory devices)."""

from __future__ import annotations

from pathlib import Path

from clever_cluster.daemon.fence_peer import FenceOutcome, Verdict
from clever_cluster.daemon.fence_peer_bridge import CoordinatorForDrbd
from clever_cluster.fencing.types import Episode, Outcome

from .fencing.fakes import FakeAgent
from .fencing.test_coordinator import EP, World, coordinator
from .test_fence_peer_service import ENV, Peer, service


async def test_confirmed_only_with_the_coordinators_record(tmp_path: Path) -> None:
    world = World()
    agent = FakeAgent("bmc")
    bridge = CoordinatorForDrbd(coordinator(tmp_path, [[agent]], world), lambda: (EP, EP.peer_incarnation))
    assert bridge.record_for_current_episode() is None
    r = await bridge.fence_for_drbd("test")
    assert r.outcome is FenceOutcome.CONFIRMED and bridge.record_for_current_episode() == EP.key()
    later = CoordinatorForDrbd(bridge.coordinator, lambda: (Episode("node2", 5, "boot-3", 2), 5))
    assert later.record_for_current_episode() is None  # a record never serves another episode


async def test_gate_closed_and_no_episode_are_not_allowed(tmp_path: Path) -> None:
    world = World()
    world.gate_open = False
    agent = FakeAgent("bmc")
    bridge = CoordinatorForDrbd(coordinator(tmp_path, [[agent]], world), lambda: (EP, EP.peer_incarnation))
    assert (await bridge.fence_for_drbd("test")).outcome is FenceOutcome.NOT_ALLOWED and "off" not in agent.calls
    none = CoordinatorForDrbd(bridge.coordinator, lambda: None)
    assert (await none.fence_for_drbd("test")).outcome is FenceOutcome.NOT_ALLOWED


async def test_device_failure_is_failed(tmp_path: Path) -> None:
    agent = FakeAgent("bmc", [Outcome.FAILED])
    bridge = CoordinatorForDrbd(coordinator(tmp_path, [[agent]], World(), max_rounds=1), lambda: (EP, EP.peer_incarnation))
    assert (await bridge.fence_for_drbd("test")).outcome is FenceOutcome.FAILED
    assert bridge.record_for_current_episode() is None


async def test_the_service_answers_peer_fenced_with_the_coordinators_record(tmp_path: Path) -> None:
    bridge = CoordinatorForDrbd(coordinator(tmp_path, [[FakeAgent("bmc")]], World()), lambda: (EP, EP.peer_incarnation))
    v, _, record = await service(peer=Peer(heard=[False]), fencer=bridge).fence_peer(ENV)
    assert v is Verdict.PEER_FENCED and record == EP.key()
