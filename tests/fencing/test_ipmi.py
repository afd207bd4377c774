"""The IPMI agent against a real pyghmi BMC emulator in a subprocess."""

from __future__ import annotations

import time
from pathlib import Path

from clever_cluster.fencing.identity import IdentityBook, Trust, check_identity, settle_off_reading
from clever_cluster.fencing.ipmi import IpmiAgent, IpmiParams
from clever_cluster.fencing.types import Deadline, Outcome, PowerState, Secret

from .emulators import BMC_PASSWORD, BMC_USER, OTHER_UUID, OWN_UUID, PEER_UUID, free_udp_port


def agent(port: int, password: str = BMC_PASSWORD, timeout: float = 8.0) -> IpmiAgent:
    return IpmiAgent("bmc-peer", IpmiParams("127.0.0.1", port, BMC_USER, Secret(password.encode())), timeout=timeout, poll_interval=0.2)


async def test_immediate_off_is_confirmed_by_two_off_readings(bmc_factory) -> None:
    b = bmc_factory("immediate")
    r = await agent(b.port).off(Deadline.after(8))
    assert r.outcome is Outcome.CONFIRMED_OFF and r.confirmed
    assert b.names()[-2:] == ["power_off", "off_applied"]
    assert sum("read OFF" in e for e in r.evidence) == 2


async def test_delayed_off_is_confirmed_only_after_the_machine_is_off(bmc_factory) -> None:
    b = bmc_factory("delay:1.5")
    r = await agent(b.port).off(Deadline.after(10))
    assert r.confirmed
    applied = next(e for e in b.events() if e["event"] == "off_applied")
    # The BMC wrote its event before our reads saw OFF: confirmation cannot precede the power change.
    assert r.finished >= applied["t"]
    assert any(e.startswith("not off") for e in r.evidence)


async def test_stuck_bmc_times_out_within_the_budget(bmc_factory) -> None:
    b = bmc_factory("stuck")
    t0 = time.monotonic()
    r = await agent(b.port).off(Deadline.after(3))
    assert r.outcome is Outcome.TIMED_OUT and not r.confirmed
    assert time.monotonic() - t0 < 3 + 2.5
    assert "power_off" in b.names() and "off_applied" not in b.names()


async def test_refusing_bmc_fails_fast_with_its_completion_code(bmc_factory) -> None:
    b = bmc_factory("refuse")
    t0 = time.monotonic()
    r = await agent(b.port).off(Deadline.after(8))
    assert r.outcome is Outcome.FAILED
    assert "not supported in present state" in r.message
    assert time.monotonic() - t0 < 4


async def test_wrong_password_fails_without_a_power_action(bmc_factory) -> None:
    b = bmc_factory("immediate")
    a = agent(b.port, password="wrong-password")
    r = await a.off(Deadline.after(5))
    assert r.outcome is Outcome.FAILED and "login refused" in r.message
    assert "power_off" not in b.names()
    assert not (await a.monitor(Deadline.after(5))).ok


async def test_closed_port_is_unreachable() -> None:
    r = await agent(free_udp_port()).off(Deadline.after(8))
    assert r.outcome is Outcome.UNREACHABLE


async def test_bmc_that_dies_after_acknowledging_is_not_confirmed(bmc_factory) -> None:
    b = bmc_factory("dies_after_ack")
    r = await agent(b.port).off(Deadline.after(4))
    assert not r.confirmed and r.outcome in (Outcome.TIMED_OUT, Outcome.UNREACHABLE)
    assert "bmc_died" in b.names() and "off_applied" not in b.names()


async def test_monitor_reads_guid_and_power_without_a_power_action(bmc_factory) -> None:
    b = bmc_factory("immediate")
    h = await agent(b.port).monitor(Deadline.after(5))
    assert h.ok and h.machine_id == PEER_UUID and h.power is PowerState.ON
    assert b.names() == ["started"]


async def test_another_machines_uuid_is_refused_before_any_power_action(bmc_factory, tmp_path: Path) -> None:
    b = bmc_factory("immediate", machine_uuid=OTHER_UUID)
    a = agent(b.port)
    v = await check_identity(a, peer_machine_id=PEER_UUID, own_machine_id=OWN_UUID, peer_heard=True, deadline=Deadline.after(5))
    assert v.trust is Trust.MISMATCH and OTHER_UUID in v.message
    book = IdentityBook({a.name: a.describe()})
    book.record(v)
    assert not book.trusted(a.name, PEER_UUID)
    assert "power_off" not in b.names()


async def test_bmc_of_this_node_is_refused(bmc_factory) -> None:
    b = bmc_factory("immediate", machine_uuid=OWN_UUID)
    v = await check_identity(agent(b.port), peer_machine_id=PEER_UUID, own_machine_id=OWN_UUID, peer_heard=True, deadline=Deadline.after(5))
    assert v.trust is Trust.MISMATCH and "own machine id" in v.message


async def test_device_reading_off_while_the_peer_is_heard_is_refused(bmc_factory) -> None:
    b = bmc_factory("immediate", power="off")
    v = await check_identity(agent(b.port), peer_machine_id=PEER_UUID, own_machine_id=OWN_UUID, peer_heard=True, deadline=Deadline.after(5))
    # Inconclusive at once (a peer that just lost power still counts as heard); a mismatch
    # once the peer is still heard a detection time later, unverified if it fell silent.
    assert v.trust is Trust.UNVERIFIED and v.off_while_heard and "still counts as heard" in v.message
    assert settle_off_reading(v, still_heard=True, waited=1.1).trust is Trust.MISMATCH
    silent = settle_off_reading(v, still_heard=False, waited=1.1)
    assert silent.trust is Trust.UNVERIFIED and not silent.off_while_heard


async def test_password_never_appears_in_results_or_descriptions(bmc_factory) -> None:
    b = bmc_factory("refuse")
    a = agent(b.port)
    r = await a.off(Deadline.after(5))
    text = repr(r) + a.describe() + repr(a.params) + str(a.params.password)
    assert BMC_PASSWORD not in text
    assert b"s3cret" not in text.encode()
