"""Device monitor, identity book, redundancy text and the priority-delay check."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

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
