"""In-test implementations of the fence-peer service's dependencies, wired to a real lab.

They behave as the real parts will:
- :class:`LabHeartbeat` (PeerLink): the peer is heard while its machine is on
  and a path other than the replication link carries traffic (hb1, or both
  LAN uplinks), read from the real link state; "outdate your disk" runs the
  peer's real :class:`OutdateResponder` on the peer's real DRBD adapter, and
  raises PeerUnreachable as soon as the peer is no longer heard.
- :class:`LabFencer` (FenceCoordinator): powering the peer off means its links
  go down first, then its DRBD simulator dies (like the BMC emulator); a
  record file is written and fsynced before "confirmed" is returned.
- :class:`Local` (LocalState): the phase and gate, set by the test.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import subprocess
from pathlib import Path

from clever_cluster.daemon.fence_peer import (
    FenceOutcome,
    FenceResult,
    HandlerGate,
    OutdateResponder,
    PeerOutdate,
    PeerUnreachable,
)
from clever_cluster.sim.drbd.lab import SimNode
from clever_cluster.sim.netns import TwoNodes


@dataclasses.dataclass
class Local:
    phase: str = "PRIMARY"
    gate_valid: bool = True
    episode: str = "episode-1"

    def handler_gate(self) -> HandlerGate:
        return HandlerGate(self.phase, self.gate_valid, self.episode)


def carrier(ns: str, ifname: str) -> bool:
    out = subprocess.run(["ip", "-o", "-n", ns, "link", "show", "dev", ifname], capture_output=True, text=True, check=False).stdout
    return "LOWER_UP" in out and "NO-CARRIER" not in out


class LabHeartbeat:
    def __init__(self, topo: TwoNodes, me: int, peer_node: SimNode, responder: OutdateResponder) -> None:
        self.topo = topo
        self.me = topo.node(me)
        self.peer = topo.node(3 - me)
        self.peer_node = peer_node
        self.responder = responder
        self.hold: asyncio.Event | None = None  # a test may hold the peer's answer
        self.requests = 0

    def peer_heard(self) -> bool:
        if not self.peer_node.alive():
            return False
        lan = carrier(self.me.ns, "eth0") and carrier(self.peer.ns, "eth0")
        return carrier(self.me.ns, "hb1") or lan

    async def request_outdate(self, resource: str) -> PeerOutdate:
        self.requests += 1

        async def answer() -> PeerOutdate:
            if self.hold is not None:
                await self.hold.wait()
            return await self.responder.handle(resource)

        task = asyncio.create_task(answer())
        try:
            while not task.done():
                if not await asyncio.to_thread(self.peer_heard):
                    raise PeerUnreachable("no heartbeat from the peer any more")
                await asyncio.wait({task}, timeout=0.1)
            return task.result()
        finally:
            task.cancel()


class LabFencer:
    def __init__(self, topo: TwoNodes, peer: int, peer_node: SimNode, record_dir: Path, mode: str = "ok") -> None:
        self.topo = topo
        self.peer_ns = topo.node(peer).ns
        self.peer_node = peer_node
        self.record = record_dir / "fence-record"
        self.mode = mode
        self.calls = 0

    async def fence_for_drbd(self, reason: str) -> FenceResult:
        self.calls += 1
        if self.mode == "impossible":
            return FenceResult(FenceOutcome.NOT_ALLOWED, "no gateway reachable from here: probably the isolated node (S7)")
        if self.mode == "later":
            return FenceResult(FenceOutcome.FAILED, "the fence device did not answer; retrying in the background")
        await self.power_off()
        return FenceResult(FenceOutcome.CONFIRMED, "BMC reports the peer's machine off")

    async def power_off(self) -> None:
        for ifname in ("hb0", "hb1", "eth0"):
            await asyncio.to_thread(self.topo.lab.down, self.peer_ns, ifname)
        await asyncio.to_thread(self.peer_node.kill)
        fd = os.open(self.record, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, b"episode-1 peer off\n")
            os.fsync(fd)
        finally:
            os.close(fd)

    def record_for_current_episode(self) -> str | None:
        return "episode-1" if self.record.exists() else None
