"""The fencing coordinator with in-memory devices: joining, levels, delay,
gate, heartbeats, identity, records and the operator's confirmation."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from clever_cluster.fencing.coordinator import FenceCoordinator, FenceEvent, FenceRequest
from clever_cluster.fencing.identity import IdentityBook, IdentityVerdict, Trust
from clever_cluster.fencing.journal import FenceJournal
from clever_cluster.fencing.manual import ConfirmRefused, ManualAgent
from clever_cluster.fencing.types import Episode, Outcome

from .emulators import OTHER_UUID, OWN_UUID, PEER_UUID
from .fakes import FakeAgent

EP = Episode("node2", 4, "boot-2", 1)
REPO = Path(__file__).resolve().parents[2]


class World:
    """The injected callables: heartbeats, the gateway gate, the peer's machine id."""

    def __init__(self) -> None:
        self.heard = False
        self.gate_open = True
        self.gate_calls: list[float] = []

    def peer_heard(self) -> bool:
        return self.heard

    async def gate(self) -> bool:
        self.gate_calls.append(time.monotonic())
        return self.gate_open


def trusted_book(*agents: Any) -> IdentityBook:
    book = IdentityBook({a.name: a.describe() for a in agents})
    for a in agents:
        book.record(IdentityVerdict(a.name, Trust.VERIFIED, "verified in test", PEER_UUID, PEER_UUID))
    return book


def coordinator(tmp_path: Path, levels: list[list[Any]], world: World, book: IdentityBook | None = None, **kw: Any) -> FenceCoordinator:
    events: list[FenceEvent] = kw.pop("events", [])
    return FenceCoordinator(node="node1", boot_id="boot-1", own_machine_id=OWN_UUID, target="node2", levels=levels,
                            journal=FenceJournal(tmp_path), identity=book or trusted_book(*[a for lvl in levels for a in lvl]),
                            gateway_gate=world.gate, peer_heard=world.peer_heard, peer_machine_id=lambda: PEER_UUID,
                            retry_backoff=0.05, retry_backoff_max=0.1, max_rounds=kw.pop("max_rounds", 2),
                            on_event=events.append, **kw)


def req(delay: float = 0.0, requester: str = "loop", episode: Episode = EP) -> FenceRequest:
    return FenceRequest(episode=episode, target_incarnation=episode.peer_incarnation, delay=delay, reason="peer lost", requester=requester)


async def test_concurrent_callers_join_one_operation(tmp_path: Path) -> None:
    dev = FakeAgent("bmc", delay=0.2)
    c = coordinator(tmp_path, [[dev]], World(), after="off")
    reports = await asyncio.gather(c.fence(req(0.1, "loop")), c.fence(req(0.1, "drbd fence-peer")), c.fence(req(0.1, "clevervm fence")))
    assert all(r.confirmed for r in reports)
    assert reports[0].record == reports[1].record == reports[2].record
    assert dev.calls.count("off") == 1
    st = c.status()
    assert st is not None and st.requesters == ["loop", "drbd fence-peer", "clevervm fence"]


async def test_a_caller_that_stops_waiting_does_not_stop_the_fence(tmp_path: Path) -> None:
    dev = FakeAgent("bmc", delay=0.3)
    c = coordinator(tmp_path, [[dev]], World(), after="off")
    t = asyncio.create_task(c.fence(req()))
    await asyncio.sleep(0.1)
    t.cancel()
    assert (await c.fence(req(requester="drbd fence-peer"))).confirmed
    assert dev.calls.count("off") == 1


async def test_level_fallback_and_every_device_of_a_level_must_confirm(tmp_path: Path) -> None:
    a, b = FakeAgent("bmc", [Outcome.CONFIRMED_OFF]), FakeAgent("pdu-a", [Outcome.FAILED])
    c2, d2 = FakeAgent("pdu-b"), FakeAgent("pdu-c")
    c = coordinator(tmp_path, [[a, b], [c2, d2]], World(), after="off", device_attempts=2)
    r = await c.fence(req())
    assert r.confirmed and r.record is not None
    assert r.record.level == 2 and r.record.devices == ("pdu-b", "pdu-c")
    assert b.calls.count("off") == 2  # retried inside its budget, never confirmed
    assert all(not e.startswith("bmc") for e in r.record.evidence)


async def test_retries_inside_the_device_budget(tmp_path: Path) -> None:
    dev = FakeAgent("bmc", [Outcome.UNREACHABLE, Outcome.FAILED, Outcome.CONFIRMED_OFF])
    c = coordinator(tmp_path, [[dev]], World(), after="off", device_attempts=3)
    r = await c.fence(req())
    assert r.confirmed and dev.calls.count("off") == 3
    assert r.results[-1].attempts == 3


@pytest.mark.parametrize("outcome", [Outcome.TIMED_OUT, Outcome.UNREACHABLE, Outcome.FAILED, Outcome.CONTRADICTION])
async def test_nothing_but_confirmed_off_confirms(tmp_path: Path, outcome: Outcome) -> None:
    events: list[FenceEvent] = []
    dev = FakeAgent("bmc", [outcome])
    c = coordinator(tmp_path, [[dev]], World(), after="off", events=events, device_attempts=1)
    r = await c.fence(req())
    assert r.outcome is Outcome.FAILED and not r.confirmed and r.record is None
    assert c.record_for(EP) is None and FenceJournal(tmp_path).records() == []
    if outcome is Outcome.CONTRADICTION:
        assert any(e.kind == "device_result" and e.alert for e in events)


async def test_delay_then_gate_closed_means_no_fence(tmp_path: Path) -> None:
    w = World()
    w.gate_open = False
    dev = FakeAgent("bmc")
    c = coordinator(tmp_path, [[dev]], w)
    t0 = time.monotonic()
    r = await c.fence(req(delay=0.4))
    assert r.outcome is Outcome.GATE_CLOSED and not r.confirmed
    assert dev.calls == [] and c.record_for(EP) is None
    assert w.gate_calls and w.gate_calls[0] - t0 >= 0.4  # a fresh gate at the end of the delay


async def test_a_gate_that_fails_counts_as_closed(tmp_path: Path) -> None:
    dev = FakeAgent("bmc")

    async def broken_gate() -> bool:
        raise OSError("no route")

    c = FenceCoordinator(node="node1", boot_id="b", own_machine_id=OWN_UUID, target="node2", levels=[[dev]], journal=FenceJournal(tmp_path),
                         identity=trusted_book(dev), gateway_gate=broken_gate, peer_heard=lambda: False, peer_machine_id=lambda: PEER_UUID)
    assert (await c.fence(req())).outcome is Outcome.GATE_CLOSED and dev.calls == []


async def test_peer_heard_during_the_delay_cancels(tmp_path: Path) -> None:
    w = World()
    dev = FakeAgent("bmc")
    c = coordinator(tmp_path, [[dev]], w)

    async def heard_later() -> None:
        await asyncio.sleep(0.2)
        w.heard = True

    waker = asyncio.create_task(heard_later())
    r = await c.fence(req(delay=2.0))
    await waker
    assert r.outcome is Outcome.CANCELLED and "heard again" in r.message
    assert dev.calls == [] and w.gate_calls == []


async def test_peer_heard_before_the_next_device_cancels(tmp_path: Path) -> None:
    w = World()
    first = FakeAgent("bmc", [Outcome.FAILED])
    second = FakeAgent("pdu")
    orig_off = first.off

    async def off_then_heard(deadline: Any) -> Any:
        r = await orig_off(deadline)
        w.heard = True  # the peer's heartbeat comes back while the first level fails
        return r

    first.off = off_then_heard  # type: ignore[method-assign]
    c = coordinator(tmp_path, [[first], [second]], w, device_attempts=1)
    r = await c.fence(req())
    assert r.outcome is Outcome.CANCELLED and "off" not in second.calls


async def test_record_from_an_earlier_episode_is_never_reused(tmp_path: Path) -> None:
    dev = FakeAgent("bmc")
    c = coordinator(tmp_path, [[dev]], World(), after="off")
    first = await c.fence(req())
    assert first.confirmed
    later = Episode("node2", 5, "boot-3", 2)
    again = await c.fence(req(episode=later))
    assert again.confirmed and again.record is not None and again.record.episode == later
    assert dev.calls.count("off") == 2
    assert c.record_for(EP) is not None and c.record_for(later) is not None and c.record_for(EP) != c.record_for(later)


async def test_record_survives_a_restart(tmp_path: Path) -> None:
    dev = FakeAgent("bmc")
    assert (await coordinator(tmp_path, [[dev]], World(), after="off").fence(req())).confirmed
    dev2 = FakeAgent("bmc")
    restarted = coordinator(tmp_path, [[dev2]], World(), after="off")
    r = await restarted.fence(req())
    assert r.confirmed and r.record is not None and r.record.devices == ("bmc",)
    assert dev2.calls == []  # the record on disk answers; no device is touched


async def test_nobody_is_told_confirmed_before_the_record_is_fsynced(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import clever_cluster.fencing.journal as journal_mod

    dev = FakeAgent("bmc", delay=0.1)
    c = coordinator(tmp_path, [[dev]], World(), after="off")
    callers = [asyncio.create_task(c.fence(req(requester=f"caller{i}"))) for i in range(3)]
    seen: list[list[bool]] = []
    real = journal_mod.append_line_fsync

    def spying_append(path: Path, line: bytes) -> None:
        seen.append([t.done() for t in callers])
        real(path, line)

    monkeypatch.setattr(journal_mod, "append_line_fsync", spying_append)
    reports = await asyncio.gather(*callers)
    assert seen == [[False, False, False]]
    assert all(r.confirmed for r in reports)


def test_crash_between_confirm_and_fsync_leaves_no_record(tmp_path: Path) -> None:
    child = subprocess.Popen([sys.executable, str(REPO / "tests" / "fencing" / "crash_child.py"), str(tmp_path)],
                             stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        assert child.stdout is not None
        line = child.stdout.readline()
        assert line.strip() == "CONFIRMED-BEFORE-FSYNC", line
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait(10)
    # After the restart: no record for the episode, so no promotion (S1), and a
    # new operation powers the peer off again instead of trusting a memory.
    assert FenceJournal(tmp_path).record_for(EP) is None
    dev = FakeAgent("bmc")
    r = asyncio.run(coordinator(tmp_path, [[dev]], World(), after="off").fence(req()))
    assert r.confirmed and dev.calls.count("off") == 1


async def test_untrusted_device_is_refused_without_a_power_action(tmp_path: Path) -> None:
    dev = FakeAgent("bmc")
    book = IdentityBook({"bmc": "fake"})
    c = coordinator(tmp_path, [[dev]], World(), book=book, device_attempts=1)
    r = await c.fence(req())
    assert not r.confirmed and r.results[-1].outcome is Outcome.REFUSED
    assert "off" not in dev.calls


async def test_uuid_changed_since_verification_disables_the_device(tmp_path: Path) -> None:
    dev = FakeAgent("bmc", machine_id=OTHER_UUID)
    book = trusted_book(dev)
    events: list[FenceEvent] = []
    c = coordinator(tmp_path, [[dev]], World(), book=book, events=events, device_attempts=1)
    r = await c.fence(req())
    assert not r.confirmed and "off" not in dev.calls
    assert book.verdict("bmc").trust is Trust.MISMATCH
    assert any(e.kind == "identity_refused" and e.alert for e in events)


async def test_after_on_powers_the_peer_back_on_only_after_the_record(tmp_path: Path) -> None:
    dev = FakeAgent("bmc")
    c = coordinator(tmp_path, [[dev]], World(), after="on")
    r = await c.fence(req())
    assert r.confirmed and FenceJournal(tmp_path).record_for(EP) is not None
    for _ in range(100):
        if "on" in dev.calls:
            break
        await asyncio.sleep(0.01)
    assert dev.calls[-1] == "on" and dev.calls.index("on") > dev.calls.index("off")
    st = c.status()
    assert st is not None and st.power_on and st.power_on[0].ok
    dev_off = FakeAgent("bmc")
    (tmp_path / "b").mkdir()
    c2 = coordinator(tmp_path / "b", [[dev_off]], World(), after="off")
    assert (await c2.fence(req())).confirmed
    await asyncio.sleep(0.05)
    assert "on" not in dev_off.calls


async def test_operator_confirmation_during_the_manual_level(tmp_path: Path) -> None:
    w = World()
    bmc = FakeAgent("bmc", [Outcome.UNREACHABLE])
    manual = ManualAgent("operator", "node2", timeout=30)
    c = coordinator(tmp_path, [[bmc], [manual]], w, device_attempts=1, max_rounds=None)
    task = asyncio.create_task(c.fence(req()))
    for _ in range(200):
        if manual.waiting:
            break
        await asyncio.sleep(0.01)
    assert manual.waiting
    with pytest.raises(ConfirmRefused, match="not the peer"):
        await c.confirm_fenced(EP, 4, "node1", "root", peer_heard=False, drbd_connected=False)
    with pytest.raises(ConfirmRefused, match="heard"):
        await c.confirm_fenced(EP, 4, "node2", "root", peer_heard=True, drbd_connected=False)
    with pytest.raises(ConfirmRefused, match="Connected"):
        await c.confirm_fenced(EP, 4, "node2", "root", peer_heard=False, drbd_connected=True)
    assert not task.done()
    rec = await c.confirm_fenced(EP, 4, "node2", "alice (uid 1000)", peer_heard=False, drbd_connected=False)
    report = await task
    assert report.confirmed and report.record == rec
    assert rec.kind == "operator" and rec.operator == "alice (uid 1000)" and "alice" in rec.evidence[0]
    assert FenceJournal(tmp_path).record_for(EP) == rec


async def test_manual_device_never_times_out_into_success(tmp_path: Path) -> None:
    manual = ManualAgent("operator", "node2", timeout=0.3)
    c = coordinator(tmp_path, [[manual]], World(), max_rounds=1)
    r = await c.fence(req())
    assert r.outcome is Outcome.FAILED and r.results[-1].outcome is Outcome.TIMED_OUT
    assert c.record_for(EP) is None


async def test_operator_confirmation_without_an_operation_in_flight(tmp_path: Path) -> None:
    c = coordinator(tmp_path, [[FakeAgent("bmc")]], World())
    rec = await c.confirm_fenced(EP, 4, "node2", "root", peer_heard=False, drbd_connected=False)
    assert FenceJournal(tmp_path).record_for(EP) == rec and rec.level is None


async def test_a_record_that_cannot_be_written_is_not_a_confirmation(tmp_path: Path) -> None:
    dev = FakeAgent("bmc")
    c = coordinator(tmp_path / "missing-state-dir", [[dev]], World(), after="on")
    r = await c.fence(req())
    assert r.outcome is Outcome.FAILED and not r.confirmed and "could not be written" in r.message
    await asyncio.sleep(0.05)
    assert "on" not in dev.calls


async def test_an_agent_that_raises_is_a_failed_attempt_and_the_next_level_is_tried(tmp_path: Path) -> None:
    broken = FakeAgent("bmc")

    async def boom(deadline: Any) -> Any:
        raise RuntimeError("library bug")

    broken.off = boom  # type: ignore[method-assign]
    pdu = FakeAgent("pdu")
    r = await coordinator(tmp_path, [[broken], [pdu]], World(), after="off", device_attempts=1).fence(req())
    assert r.confirmed and r.record is not None and r.record.devices == ("pdu",)


async def test_gate_is_taken_again_before_a_later_level(tmp_path: Path) -> None:
    w = World()
    first = FakeAgent("bmc", [Outcome.TIMED_OUT])
    orig = first.off

    async def off_then_isolated(deadline: Any) -> Any:
        r = await orig(deadline)
        w.gate_open = False  # this node lost its uplink while level 1 ran
        return r

    first.off = off_then_isolated  # type: ignore[method-assign]
    second = FakeAgent("pdu")
    r = await coordinator(tmp_path, [[first], [second]], w, device_attempts=1).fence(req())
    assert r.outcome is Outcome.GATE_CLOSED and second.calls == []
    assert len(w.gate_calls) == 2


async def test_peer_reads_off_needs_every_device_of_a_trusted_level(tmp_path: Path) -> None:
    from clever_cluster.fencing.types import PowerState

    a, b = FakeAgent("pdu-a"), FakeAgent("pdu-b")
    c = coordinator(tmp_path, [[a, b]], World())
    a.power = PowerState.OFF
    assert not await c.peer_reads_off()
    b.power = PowerState.OFF
    assert await c.peer_reads_off()
    untrusted = coordinator(tmp_path / "u", [[a, b]], World(), book=IdentityBook({"pdu-a": "x", "pdu-b": "y"}))
    assert not await untrusted.peer_reads_off()
    assert "off" not in a.calls and c.record_for(EP) is None
