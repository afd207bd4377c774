"""Fence device health: periodic checks, redundancy, and ``clevervm check``.

- Every device is checked at start, after a reload and periodically with
  jitter (default every 5 min ± 20 %), never more often than once a minute
  per device (BMCs have few session slots). A check is ``monitor()`` plus
  the identity check; it never changes power.
- A device left unverified by a check that ran before the peer was heard
  with its machine id (typically the first check, at start) is checked once
  more as soon as the peer is heard: otherwise a peer lost within the first
  interval could never be fenced by it. At most one such extra check per
  periodic check, so a device is still not polled in a loop. A device whose call raises is
  reported unhealthy and unverified; it never stops the checks of the others.
- :func:`assess` turns the results into "can this node fence its peer right
  now" and the redundancy sentence shown by ``status``.
- :func:`priority_delay_warning` is the timing check of ``clevervm check``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
import time
from collections.abc import Callable, Sequence

from .agent import FenceAgent, error_text
from .identity import IdentityBook, IdentityVerdict, Trust, check_identity
from .manual import ManualAgent
from .types import Deadline, DeviceHealth, now_wall

MIN_INTERVAL = 60.0
DEFAULT_INTERVAL = 300.0
JITTER = 0.2


@dataclasses.dataclass(frozen=True)
class DeviceCheck:
    level: int
    health: DeviceHealth
    identity: IdentityVerdict

    @property
    def usable(self) -> bool:
        return self.health.ok and self.identity.trust is Trust.VERIFIED


@dataclasses.dataclass(frozen=True)
class Redundancy:
    grade: str  # "ok" | "degraded" | "none"
    can_fence_now: bool  # some automatic level is usable right now
    text: str


class DeviceMonitor:
    """Checks every fence device of one configuration."""

    def __init__(self, levels: Sequence[Sequence[FenceAgent]], identity: IdentityBook, *, own_machine_id: str,
                 peer_machine_id: Callable[[], str | None], peer_heard: Callable[[], bool], peer: str,
                 interval: float = DEFAULT_INTERVAL, last_checked: dict[str, float] | None = None,
                 rng: random.Random | None = None) -> None:
        self.levels = [list(lvl) for lvl in levels]
        self.identity = identity
        self.own_machine_id = own_machine_id
        self._peer_mid, self._heard, self.peer = peer_machine_id, peer_heard, peer
        self.interval = max(interval, MIN_INTERVAL)
        # Shared across reloads (pass the old monitor's dict) so that a reload
        # cannot make a device be polled more than once a minute.
        self.last_checked: dict[str, float] = last_checked if last_checked is not None else {}
        self.results: dict[str, DeviceCheck] = {}
        self._rng = rng or random.Random()
        self._before_peer: set[str] = set()  # unverified by a check that ran while the peer's machine id was unknown

    async def check_device(self, level: int, agent: FenceAgent) -> DeviceCheck:
        self.last_checked[agent.name] = time.monotonic()
        peer_known = self._peer_known()
        # One operation per device at a time: a check never competes with a fence for a BMC's few sessions.
        async with agent.lock:
            deadline = Deadline.after(agent.timeout)
            # A device that raises is an unhealthy, unverified device, never a
            # monitor that stops checking the others.
            try:
                health = await agent.monitor(deadline)
            except Exception as e:  # noqa: BLE001
                health = agent.health(False, f"monitor failed: {error_text(e)}")
            try:
                verdict = await check_identity(agent, peer_machine_id=self._peer_mid(), own_machine_id=self.own_machine_id,
                                               peer_heard=self._heard, deadline=deadline)
            except Exception as e:  # noqa: BLE001
                verdict = IdentityVerdict(agent.name, Trust.UNVERIFIED, f"identity check failed: {error_text(e)}", at=now_wall())
        verdict = self.identity.record(verdict)
        if peer_known or verdict.trust is not Trust.UNVERIFIED:
            self._before_peer.discard(agent.name)
        else:
            self._before_peer.add(agent.name)
        result = DeviceCheck(level, health, verdict)
        self.results[agent.name] = result
        return result

    def _peer_known(self) -> bool:
        return self._peer_mid() is not None and self._heard()

    async def recheck_now_peer_known(self) -> list[DeviceCheck]:
        """Check at once each device left unverified by a check made before the peer was heard, if it is heard now."""
        if not self._before_peer or not self._peer_known():
            return []
        return [await self.check_device(li, agent) for li, level in enumerate(self.levels, 1) for agent in level
                if agent.name in self._before_peer]

    async def check_all(self) -> list[DeviceCheck]:
        """Check each device not checked within the last minute (one at a time)."""
        now = time.monotonic()
        out = []
        for li, level in enumerate(self.levels, 1):
            for agent in level:
                last = self.last_checked.get(agent.name)
                if last is not None and now - last < MIN_INTERVAL:
                    if agent.name in self.results:
                        out.append(self.results[agent.name])
                    continue
                out.append(await self.check_device(li, agent))
        return out

    def next_delay(self) -> float:
        return max(MIN_INTERVAL, self.interval * (1 + self._rng.uniform(-JITTER, JITTER)))

    async def run(self, on_results: Callable[[list[DeviceCheck]], None] | None = None, poll: float = 1.0) -> None:
        """Check at once, then periodically with jitter, until cancelled.

        Between the periodic checks, every ``poll`` seconds, a device left
        unverified because the peer was not heard yet is checked again once it is.
        """
        while True:
            results = await self.check_all()
            if on_results is not None:
                on_results(results)
            until = time.monotonic() + self.next_delay()
            while (left := until - time.monotonic()) > 0:
                await asyncio.sleep(min(left, poll))
                rechecked = await self.recheck_now_peer_known()
                if rechecked and on_results is not None:
                    on_results(rechecked)

    def assess(self) -> Redundancy:
        return assess(self.levels, self.results, self.peer)


def assess(levels: Sequence[Sequence[FenceAgent]], results: dict[str, DeviceCheck], peer: str) -> Redundancy:
    """Can this node fence ``peer`` right now, and how many independent ways."""
    usable: list[tuple[int, Sequence[FenceAgent]]] = []
    broken: list[str] = []
    manual_level = False
    for li, level in enumerate(levels, 1):
        if all(isinstance(a, ManualAgent) for a in level):
            manual_level = True
            continue
        bad = [a.name for a in level if not (a.name in results and results[a.name].usable)]
        if bad:
            broken.append(f"level {li} ({', '.join(bad)} not usable)")
        else:
            usable.append((li, level))
    if not usable:
        why = "; ".join(broken) or "no automatic level configured"
        tail = f"; only `clevervm confirm-fenced {peer}` can end a loss" if manual_level else ""
        return Redundancy("none", False, f"none: this node cannot fence {peer} now: {why}{tail}")
    independent = [li for li, lvl in usable if not all(a.shares_peer_power for a in lvl)]
    names = "; ".join(f"level {li}: {', '.join(a.name for a in lvl)}" for li, lvl in usable)
    if not independent:
        return Redundancy("none", True, f"none: a power loss of {peer} that takes its BMC down freezes the service — add a PDU level ({names})")
    if len(usable) < 2:
        return Redundancy("degraded", True, f"degraded: one usable level ({names})" + (f"; {'; '.join(broken)}" if broken else ""))
    if broken:
        return Redundancy("degraded", True, f"degraded: {'; '.join(broken)}; still usable: {names}")
    return Redundancy("ok", True, f"ok: {len(usable)} levels can fence {peer} ({names})")


def level_budget(level: Sequence[FenceAgent]) -> float:
    """Worst-case time of one level: its devices run one after the other."""
    return sum(a.timeout for a in level)


def priority_delay_warning(priority_delay: float, peer_level1_budget: float, detection: float) -> str | None:
    """The ``clevervm check`` warning about fence races, or None.

    When both nodes lose each other, the active peer fences this node at once
    and may take up to its level-1 budget; this node waits ``priority_delay``
    after detecting the loss. If the delay ends first, both nodes shoot and
    both can end up off.
    """
    need = peer_level1_budget + detection
    if priority_delay >= need:
        return None
    return (f"fencing.priority_delay {priority_delay:g}s is below the peer's level-1 fence budget {peer_level1_budget:g}s "
            f"+ detection {detection:g}s = {need:g}s: a slow fence by the active node can end with both nodes off")


@dataclasses.dataclass(frozen=True)
class CheckLine:
    severity: str  # "ok" | "warn" | "fail"
    text: str


async def check_report(monitor: DeviceMonitor, *, priority_delay: float, peer_level1_budget: float,
                       detection: float) -> tuple[list[CheckLine], Redundancy]:
    """What ``clevervm check`` prints about fencing: each device, redundancy, timing.

    Devices checked within the last minute are not polled again; their last
    result is shown.
    """
    await monitor.check_all()
    lines: list[CheckLine] = []
    for li, level in enumerate(monitor.levels, 1):
        for agent in level:
            c = monitor.results.get(agent.name)
            if c is None:
                lines.append(CheckLine("fail", f"level {li} {agent.name} ({agent.describe()}): not checked"))
                continue
            sev = "ok" if c.usable else ("fail" if c.identity.trust is Trust.MISMATCH or not c.health.ok else "warn")
            lines.append(CheckLine(sev, f"level {li} {agent.name} ({agent.describe()}): {c.health.message}; identity {c.identity.trust.value}: {c.identity.message}"))
    red = monitor.assess()
    lines.append(CheckLine({"ok": "ok", "degraded": "warn", "none": "fail"}[red.grade], f"fence redundancy {red.text}"))
    warning = priority_delay_warning(priority_delay, peer_level1_budget, detection)
    if warning:
        lines.append(CheckLine("warn", warning))
    else:
        lines.append(CheckLine("ok", f"fencing.priority_delay {priority_delay:g}s covers the peer's level-1 budget "
                                     f"{peer_level1_budget:g}s + detection {detection:g}s"))
    return lines, red
