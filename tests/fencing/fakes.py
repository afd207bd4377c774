"""An in-memory fence device for coordinator tests (the agents themselves
are tested against real emulators elsewhere)."""

from __future__ import annotations

import asyncio

from clever_cluster.fencing.agent import DeviceError, FenceAgent
from clever_cluster.fencing.types import Deadline, DeviceHealth, FenceResult, Outcome, PowerOnResult, PowerReading, PowerState, now_wall

from .emulators import PEER_UUID


class FakeAgent(FenceAgent):
    kind = "fake"

    def __init__(self, name: str, outcomes: list[Outcome] | None = None, *, machine_id: str = PEER_UUID, delay: float = 0.0,
                 timeout: float = 5.0, shares_peer_power: bool = False) -> None:
        super().__init__(name, timeout)
        self.outcomes = list(outcomes or [Outcome.CONFIRMED_OFF])
        self.mid = machine_id
        self.delay = delay
        self.power = PowerState.ON
        self.calls: list[str] = []
        self.shares_peer_power = shares_peer_power  # type: ignore[misc]

    async def status(self, deadline: Deadline) -> PowerReading:
        self.calls.append("status")
        return PowerReading(self.power, f"fake power {self.power.value}")

    async def machine_id(self, deadline: Deadline) -> str:
        self.calls.append("machine_id")
        if self.mid == "unreachable":
            raise DeviceError(Outcome.UNREACHABLE, "fake device unreachable")
        return self.mid

    async def monitor(self, deadline: Deadline) -> DeviceHealth:
        self.calls.append("monitor")
        return self.health(self.mid != "unreachable", "fake monitor", self.power, self.mid)

    async def off(self, deadline: Deadline) -> FenceResult:
        started = now_wall()
        self.calls.append("off")
        if self.delay:
            await asyncio.sleep(min(self.delay, deadline.remaining()))
        outcome = self.outcomes.pop(0) if len(self.outcomes) > 1 else self.outcomes[0]
        if outcome is Outcome.CONFIRMED_OFF:
            self.power = PowerState.OFF
        return self.result("off", outcome, [f"fake {outcome.value}"], started)

    async def on(self, deadline: Deadline) -> PowerOnResult:
        self.calls.append("on")
        self.power = PowerState.ON
        return self.on_result(True, ["fake on"], now_wall())
