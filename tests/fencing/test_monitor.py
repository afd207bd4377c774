"""Device monitor, identity book, redundancy text and the priority-delay check."""

from __future__ import annotations

import asyncio
import logging
import random
from pathlib import Path

import pytest

from clever_cluster.fencing.identity import IdentityBook, IdentityVerdict, Trust, check_identity, same_machine
from clever_cluster.fencing.manual import ManualAgent
from clever_cluster.fencing.monitor import MIN_INTERVAL, DeviceMonitor, check_report, level_budget, priority_delay_warning
from clever_cluster.fencing.types import Deadline, PowerState

from .emulators import OTHER_UUID, OWN_UUID, PEER_UUID
from .fakes import FakeAgent


def monitor(levels, heard: bool = True, book: IdentityBook | None = None, **kw):  # type: ignore[no-untyped-def]
    book = book or IdentityBook({a.name: a.describe() for lvl in levels for a in lvl})
    return DeviceMonitor(levels, book, own_machine_id=OWN_UUID, peer_machine_id=lambda: PEER_UUID, peer_heard=lambda: heard,
                         peer="node2", **{"rng": random.Random(1), **kw})


async def test_check_verifies_a_device_while_the_peer_is_heard_and_never_powers_it() -> None:
    dev = FakeAgent("bmc")
    m = monitor([[dev]])
    (c,) = await m.check_all()
    assert c.usable and c.identity.trust is Trust.VERIFIED
    assert "off" not in dev.calls and "on" not in dev.calls


async def test_not_heard_leaves_the_device_unverified() -> None:
    m = monitor([[FakeAgent("bmc")]], heard=False)
    (c,) = await m.check_all()
    assert c.identity.trust is Trust.UNVERIFIED and not c.usable


async def test_a_device_checked_before_the_peer_was_heard_is_checked_once_more_when_it_is() -> None:
    # At start the first check can run before the peer's first heartbeat: the identity cannot be
    # verified then, and a peer lost before the next periodic check could never be fenced.
    heard = [False]
    dev = FakeAgent("bmc")
    book = IdentityBook({"bmc": dev.describe()})
    m = DeviceMonitor([[dev]], book, own_machine_id=OWN_UUID, peer_machine_id=lambda: PEER_UUID if heard[0] else None,
                      peer_heard=lambda: heard[0], peer="node2", rng=random.Random(1))
    (c,) = await m.check_all()
    assert c.identity.trust is Trust.UNVERIFIED
    assert await m.recheck_now_peer_known() == []  # still not heard: no check
    heard[0] = True
    (c,) = await m.recheck_now_peer_known()
    assert c.usable and book.trusted("bmc", PEER_UUID)
    assert await m.recheck_now_peer_known() == [] and dev.calls.count("monitor") == 2  # once, not in a loop


async def test_a_device_unverified_while_the_peer_is_heard_is_not_rechecked_early() -> None:
    dev = FakeAgent("bmc", machine_id="unreachable")
    m = monitor([[dev]])
    (c,) = await m.check_all()
    assert c.identity.trust is Trust.UNVERIFIED and "cannot read the machine id" in c.identity.message
    assert await m.recheck_now_peer_known() == [] and dev.calls.count("monitor") == 1


async def test_the_running_monitor_verifies_the_device_soon_after_the_peer_is_first_heard() -> None:
    heard = [False]
    dev = FakeAgent("bmc")
    m = DeviceMonitor([[dev]], IdentityBook({"bmc": dev.describe()}), own_machine_id=OWN_UUID,
                      peer_machine_id=lambda: PEER_UUID if heard[0] else None, peer_heard=lambda: heard[0], peer="node2")
    seen: list[list[str]] = []
    task = asyncio.create_task(m.run(lambda r: seen.append([c.identity.trust.value for c in r]), poll=0.01))
    try:
        while not seen:
            await asyncio.sleep(0.01)
        assert seen == [["unverified"]]
        heard[0] = True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 10
        while not m.results["bmc"].usable and loop.time() < deadline:
            await asyncio.sleep(0.01)
        assert m.results["bmc"].usable and seen[-1] == ["verified"]
    finally:
        task.cancel()


async def test_never_more_often_than_once_a_minute_even_across_reloads() -> None:
    dev = FakeAgent("bmc")
    m = monitor([[dev]])
    await m.check_all()
    await m.check_all()
    assert dev.calls.count("monitor") == 1
    reloaded = monitor([[dev]], last_checked=m.last_checked)
    await reloaded.check_all()
    assert dev.calls.count("monitor") == 1
    m.last_checked["bmc"] -= MIN_INTERVAL
    await m.check_all()
    assert dev.calls.count("monitor") == 2
    assert all(monitor([[dev]], interval=10).next_delay() >= MIN_INTERVAL for _ in range(50))
    delays = {round(monitor([[dev]], rng=random.Random(i)).next_delay()) for i in range(20)}
    assert len(delays) > 1 and all(240 <= d <= 360 for d in delays)


async def test_redundancy_texts() -> None:
    bmc = FakeAgent("bmc", shares_peer_power=True)
    pdu = FakeAgent("pdu")
    man = ManualAgent("operator", "node2")
    m = monitor([[bmc], [man]])
    await m.check_all()
    red = m.assess()
    assert red.grade == "none" and red.can_fence_now
    assert "BMC down freezes the service — add a PDU level" in red.text
    m2 = monitor([[bmc], [pdu]])
    await m2.check_all()
    assert m2.assess().grade == "ok"
    pdu.mid = "unreachable"
    m3 = monitor([[bmc], [pdu]])
    await m3.check_all()
    assert m3.assess().grade == "none"  # only the BMC level works now
    bmc.mid = "unreachable"
    m4 = monitor([[bmc], [man]])
    await m4.check_all()
    red = m4.assess()
    assert red.grade == "none" and not red.can_fence_now and "confirm-fenced node2" in red.text


def test_priority_delay_warning_with_numbers() -> None:
    assert priority_delay_warning(15, 10, 1.1) is None
    w = priority_delay_warning(15, 30, 1.1)
    assert w is not None and "31.1s" in w and "both nodes off" in w
    assert level_budget([FakeAgent("a", timeout=30), FakeAgent("b", timeout=60)]) == 90


async def test_check_report_lines() -> None:
    m = monitor([[FakeAgent("bmc", shares_peer_power=True)], [FakeAgent("pdu", machine_id=OTHER_UUID)]])
    lines, red = await check_report(m, priority_delay=5, peer_level1_budget=30, detection=1.1)
    text = "\n".join(f"{x.severity} {x.text}" for x in lines)
    assert "ok level 1 bmc" in text and "fail level 2 pdu" in text and "mismatch" in text
    assert "warn fencing.priority_delay 5s" in text
    assert red.grade == "none"


async def test_identity_book_persists_verified_devices_only_for_the_same_device(tmp_path: Path) -> None:
    dev = FakeAgent("bmc")
    book = IdentityBook({"bmc": "ipmi 10.0.0.1"}, tmp_path)
    v = await check_identity(dev, peer_machine_id=PEER_UUID, own_machine_id=OWN_UUID, peer_heard=True, deadline=Deadline.after(5))
    book.record(v)
    assert IdentityBook({"bmc": "ipmi 10.0.0.1"}, tmp_path).trusted("bmc", PEER_UUID)
    assert IdentityBook({"bmc": "ipmi 10.0.0.1"}, tmp_path).trusted("bmc", None)
    assert not IdentityBook({"bmc": "ipmi 10.0.0.1"}, tmp_path).trusted("bmc", OTHER_UUID)  # the peer's hardware changed
    assert not IdentityBook({"bmc": "ipmi 10.0.0.2"}, tmp_path).trusted("bmc", PEER_UUID)  # another device now


def test_identity_book_rules() -> None:
    book = IdentityBook({"bmc": "x"})
    ok = IdentityVerdict("bmc", Trust.VERIFIED, "ok", PEER_UUID, PEER_UUID)
    book.record(ok)
    assert book.record(IdentityVerdict("bmc", Trust.UNVERIFIED, "unreachable")) == ok  # no downgrade by a failed check
    bad = IdentityVerdict("bmc", Trust.MISMATCH, "other uuid", OTHER_UUID, PEER_UUID)
    book.record(bad)
    assert book.record(ok) == bad and not book.trusted("bmc", PEER_UUID)  # disabled until reload


def test_same_machine_accepts_the_byte_swapped_guid_only() -> None:
    import uuid

    u = uuid.UUID(PEER_UUID)
    swapped = str(uuid.UUID(bytes_le=u.bytes))
    assert same_machine(PEER_UUID, swapped) and same_machine(PEER_UUID.upper(), PEER_UUID)
    assert not same_machine(PEER_UUID, OTHER_UUID)


async def test_manual_device_needs_no_identity() -> None:
    v = await check_identity(ManualAgent("op", "node2"), peer_machine_id=None, own_machine_id=OWN_UUID, peer_heard=False, deadline=Deadline.after(1))
    assert v.trust is Trust.VERIFIED
    assert (await FakeAgent("x").status(Deadline.after(1))).state is PowerState.ON


async def test_a_mismatch_is_logged_once_as_an_error_naming_both_machines(caplog: pytest.LogCaptureFixture) -> None:
    m = monitor([[FakeAgent("bmc", machine_id=OTHER_UUID)]])
    m.interval = 0.0
    with caplog.at_level(logging.INFO, logger="clever_cluster.fencing"):
        (c,) = await m.check_all()
        m.last_checked.clear()
        await m.check_all()
    assert c.identity.trust is Trust.MISMATCH and not c.usable
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1, caplog.records
    msg = errors[0].getMessage()
    assert "bmc" in msg and OTHER_UUID in msg and PEER_UUID in msg and "never used" in msg
    assert errors[0].fields == {"CLEVER_REASON": "fence_device_mismatch", "CLEVER_PEER": "node2"}  # type: ignore[attr-defined]


async def test_an_off_reading_is_a_mismatch_only_with_proof_of_life_after_it() -> None:
    """With the heartbeat's last-heard time, "heard" alone (which a loop stall prolongs
    past a power loss) does not make an OFF reading a mismatch: a datagram the peer sent
    after the reading does, even if the peer went silent since."""
    import time

    dev = FakeAgent("bmc")
    dev.power = PowerState.OFF
    last: list[float] = [time.monotonic()]  # the last datagram left before the reading
    m = monitor([[dev]], peer_loss_detection=0.05, peer_last_heard=lambda: last[0])
    (c,) = await m.check_all()
    assert c.identity.trust is Trust.UNVERIFIED and "fell silent" in c.identity.message, c.identity  # heard() is True throughout

    class AliveAfterTheReading(FakeAgent):
        async def status(self, deadline: Deadline):  # type: ignore[no-untyped-def]
            r = await super().status(deadline)
            asyncio.get_running_loop().call_later(0.01, lambda: last.__setitem__(0, time.monotonic()))
            return r

    dev2 = AliveAfterTheReading("bmc2")
    dev2.power = PowerState.OFF
    heard = [True]
    m2 = DeviceMonitor([[dev2]], IdentityBook({"bmc2": "x"}), own_machine_id=OWN_UUID, peer_machine_id=lambda: PEER_UUID,
                       peer_heard=lambda: heard[0], peer="node2", peer_loss_detection=0.1, peer_last_heard=lambda: last[0])
    task = asyncio.create_task(m2.check_device(1, dev2))
    await asyncio.sleep(0.05)
    heard[0] = False  # silent by the time the reading is judged: the datagram after it still counts
    c2 = await task
    assert c2.identity.trust is Trust.MISMATCH and "still heard" in c2.identity.message, c2.identity


async def test_a_device_is_not_trusted_while_its_off_reading_is_being_settled() -> None:
    """Between the OFF reading and its judgement a fence must not believe that device's
    OFF readings: it might read another machine. A device verified before gets its
    trust back when the peer turns out to have fallen silent."""
    import time

    dev = FakeAgent("bmc")
    book = IdentityBook({"bmc": dev.describe()})
    book.record(IdentityVerdict("bmc", Trust.VERIFIED, "verified earlier", PEER_UUID, PEER_UUID))
    dev.power = PowerState.OFF
    last = time.monotonic()
    m = monitor([[dev]], book=book, peer_loss_detection=0.3, peer_last_heard=lambda: last)
    task = asyncio.create_task(m.check_device(1, dev))
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10
    while not book.verdict("bmc").off_while_heard and loop.time() < deadline:
        await asyncio.sleep(0.01)
    assert not task.done() and not book.trusted("bmc", PEER_UUID) and book.verdict("bmc").off_while_heard
    assert (await task).identity.trust is Trust.VERIFIED and book.trusted("bmc", PEER_UUID)
    # A check cancelled while settling (a reload) leaves the verdict in force as it was.
    task = asyncio.create_task(m.check_device(1, dev))
    while not book.verdict("bmc").off_while_heard and loop.time() < deadline:
        await asyncio.sleep(0.01)
    assert not book.trusted("bmc", PEER_UUID)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert book.trusted("bmc", PEER_UUID)


def test_a_reload_during_the_settling_of_an_off_reading_does_not_trust_the_device(tmp_path: Path) -> None:
    """Red team: a device verified earlier reads OFF while the peer is heard (recabled to another,
    powered-off machine?); a reload cancels the settling and builds a new book from the file. That
    book must not trust the device until a check verifies it again."""
    describe = {"bmc": "ipmi 10.0.0.9:623"}
    book = IdentityBook(describe, tmp_path)
    book.record(IdentityVerdict("bmc", Trust.VERIFIED, "verified", PEER_UUID, PEER_UUID))
    assert IdentityBook(describe, tmp_path).trusted("bmc", PEER_UUID)
    book.hold(IdentityVerdict("bmc", Trust.UNVERIFIED, "read OFF while heard", PEER_UUID, PEER_UUID, off_while_heard=True))
    book.release("bmc")  # the check was cancelled by the reload
    assert not IdentityBook(describe, tmp_path).trusted("bmc", PEER_UUID)
    # Settled as a power loss ("fell silent") in a book that lived on: the verification is written back.
    book.hold(IdentityVerdict("bmc", Trust.UNVERIFIED, "read OFF while heard", PEER_UUID, PEER_UUID, off_while_heard=True))
    book.record(IdentityVerdict("bmc", Trust.UNVERIFIED, "fell silent", PEER_UUID, PEER_UUID))
    assert IdentityBook(describe, tmp_path).trusted("bmc", PEER_UUID)
