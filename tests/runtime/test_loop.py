"""The decision loop with its real parts (store, history, notifier): what a failure in a cycle does."""

from __future__ import annotations

import asyncio
from pathlib import Path

from clever_cluster import policy as P
from clever_cluster.daemon.drbd.model import ConnState, DiskState, DrbdFacts, GenerationIds, Role, SafetyReport
from clever_cluster.daemon.gateway import GatewayFacts
from clever_cluster.daemon.heartbeat import model as hm
from clever_cluster.daemon.history import History
from clever_cluster.daemon.loop import DecisionLoop
from clever_cluster.daemon.mapping import LocalIdentity, Snapshot
from clever_cluster.daemon.notify import Notifier
from clever_cluster.daemon.resources.vmmonitor import VmFacts, VmInfo
from clever_cluster.daemon.statefiles import DurableStore

SETTINGS = P.Settings(node="node1", peer="node2")
DRBD = DrbdFacts(backend="drbd9", resource="r0", known=True, role=Role.SECONDARY, peer_role=Role.UNKNOWN,
                 connection=ConnState.CONNECTING, connection_raw="Connecting", disk=DiskState.UPTODATE,
                 peer_disk=DiskState.DUNKNOWN, generation=GenerationIds("6B3A1F4C2D8E9A71", "0", ("0", "0"), {}),
                 settings=SafetyReport(()))


class Host:
    """The runtime as the loop sees it: a standby that has not heard its peer yet."""

    settings = SETTINGS
    tick = 0.02

    def __init__(self) -> None:
        self.after = 0

    def snapshot(self, *, stalled: bool = False, draw: float = 0.0) -> Snapshot:
        loop = asyncio.get_running_loop()
        return Snapshot(
            now=loop.time(), wall=1_700_000_000.0, local=LocalIdentity("node1", 5, "b1", "m1", "fp"), peer_name="node2",
            peer=None, unauthenticated=False, gateway=GatewayFacts(None, 0, None, None, None, None, 0, ()), fresh=None,
            drbd=DRBD, connected_since=None, fence_peer_pending=False, mounted=False, ip=False,
            vms=VmFacts(True, (VmInfo("plc1", "shutoff", 0),), loop.time()), images={}, stopped_by_cluster=frozenset(),
            records=(), attempt=None, failures=0, peer_reported_off=False, fail_counts=(), intent=hm.AdminIntent(),
            sequence=None, last_result=None, stalled=stalled, random_draw=draw)

    def after_cycle(self, decision: P.Decision, facts: P.Facts) -> None:
        self.after += 1


class FailingOnce:
    """An executor whose first ``carry_out`` raises, as the real one did when ``StartVm(count_failure)``
    counted a failure and the state directory refused the write (ENOSPC, EROFS, EIO); any action that
    raises takes the same path."""

    def __init__(self) -> None:
        self.calls = 0

    def carry_out(self, decision: P.Decision, facts: P.Facts) -> float | None:
        self.calls += 1
        if self.calls == 1:
            raise OSError(28, "No space left on device")
        return None


async def test_an_action_that_raises_does_not_end_the_decision_loop(tmp_path: Path) -> None:
    """Sequence: a cycle's actions raise (a fail count that cannot be written). Before the fix the
    exception left ``cycle`` (only the decision and the save were guarded) and ended the loop task
    silently: the heartbeat went on announcing the last state while nothing decided any more, a
    waiting fence-peer handler was never answered (DRBD I/O frozen) and the peer, hearing us, never
    took over. The loop must log it and decide again on the next cycle."""
    host, ex = Host(), FailingOnce()
    changed = asyncio.Event()
    loop = DecisionLoop(host, P.initial_state(), DurableStore(tmp_path), ex, History(), Notifier({}),  # type: ignore[arg-type]
                        changed, "node2", clock=asyncio.get_running_loop().time)
    task = asyncio.create_task(loop.run())
    try:
        async with asyncio.timeout(20):  # polled with a generous deadline: the machine is shared
            while ex.calls < 3 and not task.done():
                await asyncio.sleep(0.02)
        assert not task.done(), f"the decision loop ended: {task.exception() if not task.cancelled() else 'cancelled'}"
        assert loop.errors >= 1 and loop.cycles >= 2
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


class Recorder:
    def carry_out(self, decision: P.Decision, facts: P.Facts) -> float | None:
        return None


class StallHost(Host):
    """Records the ``stalled`` flag of each snapshot; the first stalled one fails (a bug, or the same
    failure path as an unwritable state file: nothing of that cycle is carried out)."""

    def __init__(self) -> None:
        super().__init__()
        self.flags: list[bool] = []
        self.fail_stalled = True

    def snapshot(self, *, stalled: bool = False, draw: float = 0.0) -> Snapshot:
        self.flags.append(stalled)
        if stalled and self.fail_stalled:
            self.fail_stalled = False
            raise RuntimeError("a bug while deciding")
        return super().snapshot(stalled=stalled, draw=draw)


async def test_a_stall_reaches_the_policy_even_when_the_stalled_cycle_fails(tmp_path: Path) -> None:
    """Sequence: the process is stopped for seconds (SIGSTOP, swap); the first cycle after it carries
    ``facts.stalled``, and fails. Before the fix the flag was dropped with it: the next cycle told the
    policy nothing, so it fenced or promoted on the world as it looked before the stall instead of
    re-observing for a full heartbeat timeout (DESIGN section 3)."""
    host = StallHost()
    aio = asyncio.get_running_loop()
    offset = [0.0]
    loop = DecisionLoop(host, P.initial_state(), DurableStore(tmp_path), Recorder(), History(), Notifier({}),  # type: ignore[arg-type]
                        asyncio.Event(), "node2", clock=lambda: aio.time() + offset[0])
    task = asyncio.create_task(loop.run())
    try:
        async with asyncio.timeout(20):
            while len(host.flags) < 3:
                await asyncio.sleep(0.02)
            offset[0] += 5.0  # the clock jumps: 5 s passed without a cycle
            while (True not in host.flags or len(host.flags) < host.flags.index(True) + 3) and not task.done():
                await asyncio.sleep(0.02)
        i = host.flags.index(True)
        assert host.flags[i + 1] is True, host.flags  # the cycle after the failed one still says "stalled"
        assert loop.stalls == 1 and loop.errors == 1
        assert loop.state.observe_until > 0 and not host.fail_stalled
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
