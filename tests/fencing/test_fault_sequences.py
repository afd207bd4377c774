"""Fault sequences found by a red-team review of fencing/, each a regression
test for the fix that came with it.

Real parts wherever the behaviour can be produced: the pyghmi BMC emulator,
the real fence_ipmilan, sushy-tools, the fake stock agent script; the
in-process Redfish fake only for answers a real emulator cannot give.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from clever_cluster.daemon import config as cfgmod
from clever_cluster.daemon.fencing_setup import build_watchdog
from clever_cluster.fencing.coordinator import FenceCoordinator, FenceRequest, Phase
from clever_cluster.fencing.identity import IdentityBook, IdentityVerdict, Trust
from clever_cluster.fencing.ipmi import IpmiAgent, IpmiParams
from clever_cluster.fencing.journal import FenceJournal, FenceRecord, encode
from clever_cluster.fencing.monitor import DeviceMonitor, check_report
from clever_cluster.fencing.redfish import RedfishAgent, RedfishParams
from clever_cluster.fencing.stock import StockAgent, StockParams
from clever_cluster.fencing.types import Deadline, Episode, Outcome, PowerState, Secret
from clever_cluster.fencing.watchdog import SelfFenceGuard
from clever_cluster.sim import configgen
from clever_cluster.sim.fakewatchdog import FileWatchdog

from .emulators import BMC_PASSWORD, BMC_USER, OTHER_UUID, OWN_UUID, PEER_UUID, sushy
from .test_redfish import OTHER as OTHER_SYSTEM
from .test_redfish import PEER as PEER_SYSTEM
from .test_redfish import FakeRedfish
from .test_redfish import _Handler as _RedfishHandler
from .test_stock import fake, ipmilan

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


# --------------------------------------------------------------------------- a device that raises the unexpected


def ipmi_agent(port: int) -> Any:
    return IpmiAgent("bmc-ipmi", IpmiParams("127.0.0.1", port, BMC_USER, Secret(BMC_PASSWORD.encode())), timeout=15)


def two_system_redfish(url: str) -> RedfishAgent:
    """A Redfish service that now lists two systems while `system` is not configured (it had one when verified)."""
    return RedfishAgent("bmc-rf", RedfishParams(url, "fence", Secret(b"pw")), timeout=10, poll_interval=0.3)


async def test_a_level_whose_device_raises_a_config_error_falls_back_to_the_next_level(bmc_factory, tmp_path: Path) -> None:
    b = bmc_factory("immediate")
    with sushy(tmp_path / "rf", [PEER_SYSTEM, OTHER_SYSTEM]) as s:
        rf, ipmi = two_system_redfish(s.url), ipmi_agent(b.port)
        c = coordinator(tmp_path, [[rf], [ipmi]], World())
        r = await asyncio.wait_for(c.fence(req()), 60)
        assert r.confirmed and r.record is not None and r.record.level == 2, r
        assert any(x.device == "bmc-rf" and x.outcome is Outcome.REFUSED and "2 systems" in x.message for x in r.results), r.results
        assert "power_off" in b.names()


async def test_the_device_monitor_survives_a_device_that_raises(bmc_factory, tmp_path: Path) -> None:
    b = bmc_factory("immediate")
    with sushy(tmp_path / "rf", [PEER_SYSTEM, OTHER_SYSTEM]) as s:
        rf, ipmi = two_system_redfish(s.url), ipmi_agent(b.port)
        book = IdentityBook({a.name: a.describe() for a in (rf, ipmi)})
        m = DeviceMonitor([[rf], [ipmi]], book, own_machine_id=OWN_UUID, peer_machine_id=lambda: PEER_UUID,
                          peer_heard=lambda: True, peer="node2")
        results = await asyncio.wait_for(m.check_all(), 60)
        by_name = {c.health.device: c for c in results}
        assert set(by_name) == {"bmc-rf", "bmc-ipmi"}
        assert not by_name["bmc-rf"].usable and "2 systems" in by_name["bmc-rf"].identity.message
        assert by_name["bmc-ipmi"].usable, by_name["bmc-ipmi"]
        lines, red = await check_report(m, priority_delay=15, peer_level1_budget=10, detection=1.1)
        assert red.grade != "ok" and any("bmc-rf" in x.text for x in lines)


async def test_peer_reads_off_survives_a_device_that_raises(bmc_factory, tmp_path: Path) -> None:
    b = bmc_factory("immediate", power="off")
    with sushy(tmp_path / "rf", [PEER_SYSTEM, OTHER_SYSTEM]) as s:
        c = coordinator(tmp_path, [[two_system_redfish(s.url)], [ipmi_agent(b.port)]], World())
        assert await asyncio.wait_for(c.peer_reads_off(), 60) is True


# --------------------------------------------------------------------------- cancellation of a stock agent


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"


async def test_cancelling_the_monitor_during_a_stock_agent_call_ends_it(tmp_path: Path) -> None:
    """Shutdown cancels the monitor task while fence_* hangs in action=monitor: the
    cancellation must end the task (and kill the agent's group), not be turned into
    a failed reading after which the monitor carries on forever."""
    a, state = fake(tmp_path, {"hang": ["monitor"]})
    book = IdentityBook({a.name: a.describe()})
    m = DeviceMonitor([[a]], book, own_machine_id=OWN_UUID, peer_machine_id=lambda: PEER_UUID, peer_heard=lambda: True, peer="node2")
    task = asyncio.create_task(m.run())
    await until(lambda: (state / "child.pid").exists(), 20, "the agent to hang in action=monitor")
    task.cancel()
    done, _ = await asyncio.wait({task}, timeout=10)
    assert task in done, "the monitor task did not end when cancelled"
    assert task.cancelled()
    child = int((state / "child.pid").read_text())
    await until(lambda: _gone(child), 5, "the agent's SIGTERM-ignoring child to be killed")


# --------------------------------------------------------------------------- one stray OFF reading


class _FlappingHandler(_RedfishHandler):
    """The system resource reads PowerState from a list, one entry per GET (the last one repeats)."""

    def do_GET(self) -> None:
        srv: Any = self.server
        if self.path == "/redfish/v1/Systems/1" and srv.power_states:
            state = srv.power_states.pop(0) if len(srv.power_states) > 1 else srv.power_states[0]
            self._json(200, {**srv.system, "PowerState": state})
        else:
            super().do_GET()


@pytest.fixture
def flapping_rf() -> Iterator[FakeRedfish]:
    srv = FakeRedfish()
    srv.RequestHandlerClass = _FlappingHandler
    srv.power_states = []  # type: ignore[attr-defined]
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    try:
        yield srv
    finally:
        srv.shutdown()
        srv.server_close()


async def test_one_stray_off_reading_does_not_skip_the_priority_delay(flapping_rf: FakeRedfish, tmp_path: Path) -> None:
    """A BMC that answers PowerState "Off" once (sensor not yet populated after a BMC
    reset) while the machine runs: peer_reads_off() must not take that single read as
    "already off" (it would drop the priority delay and start a fence race)."""
    flapping_rf.power_states = ["Off", "On"]  # type: ignore[attr-defined]
    rf = RedfishAgent("bmc-rf", RedfishParams(flapping_rf.url, "fence", Secret(b"pw")), timeout=10, poll_interval=0.2)
    c = coordinator(tmp_path, [[rf]], World())
    assert await c.peer_reads_off() is False
    flapping_rf.power_states = ["Off"]  # type: ignore[attr-defined]
    assert await c.peer_reads_off() is True


# --------------------------------------------------------------------------- the journal after a torn write


def _record(ep: Episode) -> FenceRecord:
    return FenceRecord(episode=ep, target="node2", target_incarnation=ep.peer_incarnation, kind="device", level=1, devices=("bmc",),
                       evidence=("bmc: read OFF (2/2)",), started=1.0, confirmed=2.0, local_node="node1", local_boot_id="boot-a")


def test_a_record_appended_after_a_torn_line_survives_a_restart(tmp_path: Path) -> None:
    """Power lost mid-append leaves a torn last line without its newline. The next
    record appended (after the reboot) must not be glued onto it: it would read back
    as one garbled line and the proof of that episode would vanish at the next start."""
    first, second = Episode("node2", 4, "boot-2", 1), Episode("node2", 5, "boot-3", 2)
    j = FenceJournal(tmp_path)
    j.append(_record(first))
    line = encode(_record(Episode("node2", 4, "boot-2", 9)))
    with open(j.path, "ab") as f:
        f.write(line[: len(line) // 2])  # torn: no newline
    after_reboot = FenceJournal(tmp_path)
    assert after_reboot.bad_lines == 1
    after_reboot.append(_record(second))
    assert after_reboot.record_for(second) is not None
    restarted = FenceJournal(tmp_path)
    assert restarted.record_for(first) == _record(first)
    assert restarted.record_for(second) == _record(second)
    assert restarted.bad_lines == 1


# --------------------------------------------------------------------------- Redfish answers that point elsewhere


class _RecordingHandler(_RedfishHandler):
    """Records the Authorization header of every request; can list other members or redirect."""

    def _record(self) -> None:
        srv: Any = self.server
        srv.seen.append((self.command, self.path, self.headers.get("Authorization")))

    def do_GET(self) -> None:
        self._record()
        srv: Any = self.server
        if self.path == "/redfish/v1/Systems" and srv.members is not None:
            self._json(200, {"Members": [{"@odata.id": m} for m in srv.members]})
        elif self.path == "/redfish/v1/Systems/1" and srv.redirect and srv.posts:
            body = json.dumps({**srv.system, "PowerState": "Off"}).encode()
            self.send_response(302)
            self.send_header("Location", "/login")
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        else:
            super().do_GET()

    def do_POST(self) -> None:
        self._record()
        super().do_POST()


@pytest.fixture
def recording_rf() -> Iterator[Callable[[], FakeRedfish]]:
    servers: list[FakeRedfish] = []

    def start() -> FakeRedfish:
        srv = FakeRedfish()
        srv.RequestHandlerClass = _RecordingHandler
        srv.seen, srv.members, srv.redirect = [], None, False  # type: ignore[attr-defined]
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        servers.append(srv)
        return srv

    yield start
    for srv in servers:
        srv.shutdown()
        srv.server_close()


async def test_redfish_never_follows_a_member_to_another_host(recording_rf: Callable[[], FakeRedfish]) -> None:
    """The service lists its only system as an absolute URL on another host (a
    misbehaving or hostile BMC): the agent must not send the credentials there,
    nor read power from it, nor power it off."""
    bmc, elsewhere = recording_rf(), recording_rf()
    elsewhere.system["PowerState"] = "Off"
    bmc.members = [f"{elsewhere.url}/redfish/v1/Systems/1"]  # type: ignore[attr-defined]
    a = RedfishAgent("bmc-rf", RedfishParams(bmc.url, "fence", Secret(b"pw")), timeout=5, poll_interval=0.2)
    r = await a.off(Deadline.after(5))
    assert not r.confirmed and r.outcome is Outcome.FAILED and "another" in r.message, r.evidence
    assert (await a.status(Deadline.after(5))).state is not PowerState.OFF
    assert not (await a.monitor(Deadline.after(5))).ok
    assert elsewhere.seen == [], elsewhere.seen  # type: ignore[attr-defined]


async def test_redfish_reset_target_on_another_host_is_refused(recording_rf: Callable[[], FakeRedfish]) -> None:
    bmc, elsewhere = recording_rf(), recording_rf()
    bmc.system["Actions"]["#ComputerSystem.Reset"]["target"] = f"{elsewhere.url}/redfish/v1/Systems/1/Actions/ComputerSystem.Reset"
    a = RedfishAgent("bmc-rf", RedfishParams(bmc.url, "fence", Secret(b"pw")), timeout=5, poll_interval=0.2)
    r = await a.off(Deadline.after(5))
    assert not r.confirmed and r.outcome is Outcome.FAILED
    assert elsewhere.seen == [] and elsewhere.posts == []  # type: ignore[attr-defined]


async def test_redfish_same_origin_absolute_links_still_work(recording_rf: Callable[[], FakeRedfish]) -> None:
    bmc = recording_rf()
    bmc.members = [f"{bmc.url}/redfish/v1/Systems/1"]  # type: ignore[attr-defined]
    bmc.on_reset = {"PowerState": "Off"}
    a = RedfishAgent("bmc-rf", RedfishParams(bmc.url, "fence", Secret(b"pw")), timeout=5, poll_interval=0.2)
    assert await a.machine_id(Deadline.after(5)) == PEER_UUID
    assert (await a.off(Deadline.after(5))).confirmed


async def test_redfish_a_redirect_is_not_the_system(recording_rf: Callable[[], FakeRedfish]) -> None:
    """After the reset every GET of the system is answered 302 (to a login page) with a
    body that says PowerState "Off": that body is not the system resource."""
    bmc = recording_rf()
    bmc.redirect = True  # type: ignore[attr-defined]
    a = RedfishAgent("bmc-rf", RedfishParams(bmc.url, "fence", Secret(b"pw")), timeout=3, poll_interval=0.2)
    r = await a.off(Deadline.after(3))
    assert not r.confirmed and "302" in " ".join(r.evidence), r.evidence


# --------------------------------------------------------------------------- secrets in the configuration


def _lab_table(tmp_path: Path) -> tuple[dict[str, Any], Path]:
    node1, _ = configgen.write_pair(tmp_path / "lab")
    return cfgmod.tomllib.loads(node1.read_text()), node1


@pytest.mark.parametrize("key", ["community", "snmp_priv_passwd", "snmp-priv-passwd", "hexadecimal_kg", "secret_key", "token", "apikey", "Password"])
def test_a_secret_option_of_a_stock_agent_is_refused(tmp_path: Path, key: str) -> None:
    """fence_apc_snmp's `community` (or an SNMPv3 privacy password, an IPMI Kg key, a cloud
    token) in `options` would be printed by describe() into status, logs, `clevervm check`
    and the identity file: it belongs in secret_file, like `password`."""
    table, node1 = _lab_table(tmp_path)
    table["fencing"] = {"level": [{"device": [{"type": "fence_agent", "name": "pdu", "agent": "fence_apc_snmp",
                                               "options": {"ip": "10.0.0.9", "plug": "3", key: "pr1vate-S3cret"}, "machine_id": PEER_UUID}]}]}
    with pytest.raises(cfgmod.ConfigError, match="secret_file"):
        cfgmod.from_table(table, node1)


def test_a_redfish_url_with_credentials_is_refused(tmp_path: Path) -> None:
    table, node1 = _lab_table(tmp_path)
    table["fencing"] = {"level": [{"device": [{"type": "redfish", "name": "rf", "url": "https://fence:pr1vate-S3cret@10.0.9.2",
                                               "username": "fence", "password": "x"}]}]}
    with pytest.raises(cfgmod.ConfigError, match="url"):
        cfgmod.from_table(table, node1)


def test_stock_describe_never_shows_a_secret_option(tmp_path: Path) -> None:
    a = StockAgent("pdu", StockParams("fence_apc_snmp", {"ip": "10.0.0.9", "plug": "3", "community": "pr1vate-S3cret"}, {}, PEER_UUID, "node2"))
    assert "pr1vate-S3cret" not in a.describe() and "ip=10.0.0.9" in a.describe() and "plug=3" in a.describe()
    rf = RedfishAgent("rf", RedfishParams("https://fence:pr1vate-S3cret@10.0.9.2", "fence", Secret(b"x")))
    assert "pr1vate-S3cret" not in rf.describe()


# --------------------------------------------------------------------------- the identity file


async def test_a_verified_device_is_not_rewritten_to_disk_at_every_check(bmc_factory, tmp_path: Path) -> None:
    """Each monitor pass re-verifies every device; rewriting fence-identity.json (two
    fsyncs on the event loop) each time stalls the loop under I/O load for nothing."""
    b = bmc_factory("immediate")
    ipmi = ipmi_agent(b.port)
    book = IdentityBook({ipmi.name: ipmi.describe()}, tmp_path)
    m = DeviceMonitor([[ipmi]], book, own_machine_id=OWN_UUID, peer_machine_id=lambda: PEER_UUID, peer_heard=lambda: True, peer="node2")
    assert (await m.check_device(1, ipmi)).usable
    path = tmp_path / IdentityBook.FILENAME
    first = path.stat().st_ino
    assert (await m.check_device(1, ipmi)).usable
    assert path.stat().st_ino == first, "the identity file was rewritten although nothing changed"
    assert IdentityBook({ipmi.name: ipmi.describe()}, tmp_path).trusted(ipmi.name, PEER_UUID)


async def test_an_unwritable_identity_file_does_not_end_the_fence(bmc_factory, tmp_path: Path) -> None:
    """Level 1's BMC now reports another machine (hardware swapped) while the state
    directory cannot be written (gone, or remounted read-only): the mismatch must still
    refuse level 1 and level 2 must fence, not an OSError end the operation."""
    wrong, right = bmc_factory("immediate", machine_uuid=OTHER_UUID), bmc_factory("immediate")
    a1 = ipmi_agent(wrong.port)
    a2 = IpmiAgent("bmc-2", IpmiParams("127.0.0.1", right.port, BMC_USER, Secret(BMC_PASSWORD.encode())), timeout=15)
    state = tmp_path / "state"
    state.mkdir()
    book = IdentityBook({a.name: a.describe() for a in (a1, a2)}, state)
    for a in (a1, a2):
        book.record(IdentityVerdict(a.name, Trust.VERIFIED, "verified earlier", PEER_UUID, PEER_UUID))
    shutil.rmtree(state)
    c = FenceCoordinator(node="node1", boot_id="boot-1", own_machine_id=OWN_UUID, target="node2", levels=[[a1], [a2]],
                         journal=FenceJournal(tmp_path), identity=book, gateway_gate=World().gate, peer_heard=World().peer_heard,
                         peer_machine_id=lambda: PEER_UUID, after="off", max_rounds=1)
    r = await asyncio.wait_for(c.fence(req()), 60)
    assert r.confirmed and r.record is not None and r.record.devices == ("bmc-2",), r
    assert "power_off" not in wrong.names()
    assert not book.trusted("bmc-ipmi", PEER_UUID)


# --------------------------------------------------------------------------- the watchdog's timeout


def test_a_fractional_watchdog_timeout_arms_at_or_below_it(tmp_path: Path) -> None:
    """watchdog.timeout = "60500ms" was rounded up to 61 s, then refused as "above the
    configured 60.5s": a valid configuration that cannot start. The device gets the
    whole seconds at or below the configured value (it resets no later than that)."""
    dev = FileWatchdog(tmp_path / "wd")
    g = SelfFenceGuard(dev, 60.5, lambda: True)
    g.arm()
    assert g.armed and g.actual_timeout == 60 and dev.lines() == ["open", "timeout 60"]


def test_the_configuration_refuses_a_watchdog_timeout_that_arm_would_refuse(tmp_path: Path) -> None:
    """A watchdog timeout that does not outlast a daemon restart was accepted at load
    (only >= 2 x heartbeat.timeout was checked) and refused only when the daemon started."""
    table, node1 = _lab_table(tmp_path)
    table["watchdog"] = {"enabled": True, "timeout": "10s"}
    with pytest.raises(cfgmod.ConfigError, match=r"watchdog\.timeout"):
        cfgmod.from_table(table, node1)
    table["watchdog"] = {"enabled": True, "timeout": "20s"}
    g = build_watchdog(cfgmod.from_table(table, node1), lambda: True)
    assert g is not None
    g.driver = FileWatchdog(tmp_path / "wd")
    g.arm()
    assert g.armed


# --------------------------------------------------------------------------- the identity check and a peer that just died


async def test_a_peer_that_dies_during_the_identity_check_does_not_disable_its_device(bmc_factory, tmp_path: Path) -> None:
    """The peer is heard when the monitor's check starts; its machine loses power before
    the device's status read, which reads OFF. "Reads OFF while the peer is heard" is
    then not proven (the heartbeats stopped too): the device must not be disabled as a
    mismatch at the very moment it is needed to fence that peer."""
    b = bmc_factory("immediate", power="off")
    ipmi = ipmi_agent(b.port)
    heard = iter([True])  # heard once, at the start of the check; silent afterwards
    book = IdentityBook({ipmi.name: ipmi.describe()}, tmp_path)
    book.record(IdentityVerdict(ipmi.name, Trust.VERIFIED, "verified earlier", PEER_UUID, PEER_UUID))
    m = DeviceMonitor([[ipmi]], book, own_machine_id=OWN_UUID, peer_machine_id=lambda: PEER_UUID,
                      peer_heard=lambda: next(heard, False), peer="node2")
    check = await m.check_device(1, ipmi)
    assert check.identity.trust is not Trust.MISMATCH, check.identity
    assert book.trusted(ipmi.name, PEER_UUID)
    c = coordinator(tmp_path, [[ipmi]], World())
    c.identity = book
    assert (await asyncio.wait_for(c.fence(req()), 60)).confirmed


class SilentAfterPowerLoss:
    """The heartbeat's view of a peer whose machine lost power: it still counts as heard
    until a heartbeat timeout after its last datagram, then it is lost."""

    TIMEOUT = 1.0  # below the monitor's default peer-loss detection time (1.1 s)

    def __init__(self) -> None:
        self.lost_at: float | None = None

    def heard(self) -> bool:
        return self.lost_at is None or time.monotonic() - self.lost_at < self.TIMEOUT

    def dies_at_first_off_reading(self, agent: Any) -> Any:
        """The worst case, whatever the machine's load: the last heartbeat arrives just as the
        device reads the machine OFF, so the peer counts as heard for a whole timeout after it."""
        read = agent.status

        async def status(deadline: Deadline) -> Any:
            r = await read(deadline)
            if r.state is PowerState.OFF and self.lost_at is None:
                self.lost_at = time.monotonic()
            return r

        agent.status = status
        return agent


async def assert_refused_without_power_action(tmp_path: Path, agent: Any, book: IdentityBook, bmc: Any) -> None:
    """A fence of the lost peer with ``agent`` as its only device is refused and sends nothing."""
    c = coordinator(tmp_path, [[agent]], World())
    c.identity = book
    r = await asyncio.wait_for(c.fence(req()), 60)
    assert not r.confirmed and "power_off" not in bmc.names(), r


async def test_an_off_reading_while_a_dying_peer_still_counts_as_heard_is_not_a_lasting_mismatch(bmc_factory, tmp_path: Path) -> None:
    """The lab's sequence: the standby's daemon restarts (its device check runs at start), the
    active's machine is powered off through its BMC within the same second. The check reads
    OFF while the peer still counts as heard (it does for up to heartbeat.timeout): that was
    a MISMATCH that stuck until a reload, so the standby refused its only fence device for
    good and never took over. Now: inconclusive, and the fence of the lost peer goes through."""
    b = bmc_factory("immediate", power="off")
    peer = SilentAfterPowerLoss()
    ipmi = peer.dies_at_first_off_reading(ipmi_agent(b.port))
    book = IdentityBook({ipmi.name: ipmi.describe()}, tmp_path)
    book.record(IdentityVerdict(ipmi.name, Trust.VERIFIED, "verified before the restart", PEER_UUID, PEER_UUID))
    m = DeviceMonitor([[ipmi]], book, own_machine_id=OWN_UUID, peer_machine_id=lambda: PEER_UUID, peer_heard=peer.heard, peer="node2")
    check = await m.check_device(1, ipmi)
    assert check.identity.trust is Trust.VERIFIED, check.identity  # the earlier proof stands
    assert not peer.heard(), "the peer must be lost by the time the reading is judged"
    assert book.trusted(ipmi.name, PEER_UUID)
    c = coordinator(tmp_path, [[ipmi]], World())
    c.identity = book
    r = await asyncio.wait_for(c.fence(req()), 60)
    assert r.confirmed and r.record is not None and r.record.devices == (ipmi.name,), r


async def test_an_off_reading_never_verifies_a_device_that_was_not_verified_before(bmc_factory, tmp_path: Path) -> None:
    """Same sequence with no earlier proof: the device is not trusted (DESIGN 8 needs an ON
    reading while the peer is heard), nor disabled: it is unverified, the coordinator refuses
    it without a power action, and a later check with the peer back can still verify it."""
    b = bmc_factory("immediate", power="off")
    peer = SilentAfterPowerLoss()
    ipmi = peer.dies_at_first_off_reading(ipmi_agent(b.port))
    book = IdentityBook({ipmi.name: ipmi.describe()}, tmp_path)
    m = DeviceMonitor([[ipmi]], book, own_machine_id=OWN_UUID, peer_machine_id=lambda: PEER_UUID, peer_heard=peer.heard, peer="node2")
    check = await m.check_device(1, ipmi)
    assert check.identity.trust is Trust.UNVERIFIED and "fell silent" in check.identity.message, check.identity
    assert not book.trusted(ipmi.name, PEER_UUID)
    await assert_refused_without_power_action(tmp_path, ipmi, book, b)
    b2 = bmc_factory("immediate")  # the peer is back and its machine reads ON while heard
    ipmi2 = ipmi_agent(b2.port)
    peer.lost_at = None
    assert (await m.check_device(1, ipmi2)).identity.trust is Trust.VERIFIED


async def test_a_device_reading_off_while_the_peer_stays_heard_is_still_a_mismatch(bmc_factory, tmp_path: Path) -> None:
    """The identity check keeps its purpose: a device that reads OFF while the peer goes on
    sending heartbeats for a whole detection time reads another machine; it is disabled,
    even if it was verified before, and never used to power anything off."""
    b = bmc_factory("immediate", power="off")
    ipmi = ipmi_agent(b.port)
    book = IdentityBook({ipmi.name: ipmi.describe()}, tmp_path)
    book.record(IdentityVerdict(ipmi.name, Trust.VERIFIED, "verified earlier", PEER_UUID, PEER_UUID))
    m = DeviceMonitor([[ipmi]], book, own_machine_id=OWN_UUID, peer_machine_id=lambda: PEER_UUID, peer_heard=lambda: True,
                      peer="node2", peer_loss_detection=0.3)
    check = await m.check_device(1, ipmi)
    assert check.identity.trust is Trust.MISMATCH and "still heard" in check.identity.message, check.identity
    assert not book.trusted(ipmi.name, PEER_UUID)
    await assert_refused_without_power_action(tmp_path, ipmi, book, b)
