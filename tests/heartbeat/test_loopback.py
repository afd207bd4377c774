"""Two heartbeat services in one event loop, over real UDP on loopback addresses."""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import itertools
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from clever_cluster.daemon.config import Config
from clever_cluster.daemon.heartbeat import (
    HANDOVER_GRANT,
    OUTDATE_DISK,
    Announce,
    Epoch,
    GrantRequest,
    GrantToken,
    HeartbeatService,
    NodeReport,
    OutdateRequest,
    OutdateResult,
    PeerState,
    RequestFailed,
    RequestTimeout,
    RequestUnavailable,
)
from clever_cluster.daemon.heartbeat.model import Ban

from .conftest import Pair, make_pair

REPORT = NodeReport(phase="SECONDARY")


async def until(pred: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        value = pred()
        if value:
            return value
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.02)


class Nodes:
    def __init__(self, pair: Pair) -> None:
        self.pair = pair
        self.cfg: dict[int, Config] = {1: pair.cfg1, 2: pair.cfg2}
        self.svc: dict[int, HeartbeatService] = {}

    async def start(self, i: int, **kw: Any) -> HeartbeatService:
        svc = HeartbeatService.open(self.cfg[i], lambda: REPORT, **kw)
        await svc.start()
        self.svc[i] = svc
        return svc

    async def close(self) -> None:
        for svc in self.svc.values():
            await svc.stop()

    def state(self, i: int) -> PeerState:
        return self.svc[i].view().state


@pytest.fixture
async def nodes(pair: Pair) -> AsyncIterator[Nodes]:
    n = Nodes(pair)
    try:
        yield n
    finally:
        await n.close()


async def both_alive(n: Nodes) -> None:
    await until(lambda: n.state(1) is PeerState.ALIVE and n.state(2) is PeerState.ALIVE, 10, "both alive")


class LossyForwarder(asyncio.DatagramProtocol):
    """Forwards datagrams to ``target``, dropping those whose index mod 10 is below ``drop_tenths``."""

    def __init__(self, target: tuple[str, int], drop_tenths: int) -> None:
        self.target = target
        self.drop_tenths = drop_tenths
        self.n = 0
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.n += 1
        if self.n % 10 >= self.drop_tenths and self.transport is not None:
            self.transport.sendto(data, self.target)


class DelayingForwarder(asyncio.DatagramProtocol):
    """Forwards every datagram to ``target`` after ``delay`` seconds (a slow link, or an attacker holding it back)."""

    def __init__(self, target: tuple[str, int], delay: float) -> None:
        self.target = target
        self.delay = delay
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: Any) -> None:
        asyncio.get_running_loop().call_later(self.delay, self._forward, data)

    def _forward(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.sendto(data, self.target)


def via(cfg: Config, link: int, address: str) -> Config:
    """``cfg`` with its datagrams on ``link`` sent to ``address`` (where a forwarder listens) instead of the peer."""
    links = list(cfg.heartbeat.link)
    links[link] = dataclasses.replace(links[link], peer=ipaddress.ip_address(address))
    return dataclasses.replace(cfg, heartbeat=dataclasses.replace(cfg.heartbeat, link=tuple(links)))


async def test_liveness_rtt_and_loss_per_link(tmp_path: Path) -> None:
    pair = make_pair(tmp_path / "lab")
    port = pair.cfg1.heartbeat.port
    # node1's datagrams on lo1 go through a forwarder that loses 3 in 10 of them.
    links = list(pair.cfg1.heartbeat.link)
    links[0] = dataclasses.replace(links[0], peer=ipaddress.ip_address("127.0.0.13"))
    n = Nodes(pair)
    n.cfg[1] = dataclasses.replace(pair.cfg1, heartbeat=dataclasses.replace(pair.cfg1.heartbeat, link=tuple(links)))
    loop = asyncio.get_running_loop()
    fwd, _ = await loop.create_datagram_endpoint(lambda: LossyForwarder(("127.0.0.12", port), 3), local_addr=("127.0.0.13", port))
    try:
        await n.start(1)
        await n.start(2)
        await both_alive(n)
        await asyncio.sleep(3.0)  # let 30 datagrams per link go by; then measure
        v1, v2 = n.svc[1].view(), n.svc[2].view()
        assert v2.links[0].loss_in == pytest.approx(0.3, abs=0.08)
        assert v2.links[1].loss_in == pytest.approx(0.0, abs=0.05)
        assert v1.links[0].loss_out == pytest.approx(0.3, abs=0.08)  # reported back by node2
        assert v1.links[0].loss_in == pytest.approx(0.0, abs=0.05)  # one way only
        for v in (v1, v2):
            for lv in v.links:
                assert lv.up and lv.rtt is not None and 0 < lv.rtt < 0.5
        assert v1.state is v2.state is PeerState.ALIVE
        assert not v1.drops and not v2.drops
    finally:
        fwd.close()
        await n.close()


async def test_lost_after_the_timeout_then_restarted(nodes: Nodes) -> None:
    await nodes.start(1)
    await nodes.start(2)
    await both_alive(nodes)
    old_inc = nodes.svc[2].incarnation
    await nodes.svc[2].stop(None)  # as a crash: no announcement
    del nodes.svc[2]
    timeout = nodes.cfg[1].heartbeat.timeout
    await until(lambda: nodes.state(1) is PeerState.LOST, 5, "peer lost")
    lost = next(e for e in nodes.svc[1].session.events if e.kind == "peer_lost")
    last = nodes.svc[1].view().last_heard
    assert last is not None and timeout <= lost.mono - last < timeout + 0.5
    await nodes.start(2)
    await until(lambda: nodes.state(1) is PeerState.ALIVE, 10, "peer back")
    v = nodes.svc[1].view()
    assert v.restarts == 1 and v.incarnation is not None and v.incarnation > old_inc
    assert "peer_restarted" in [e.kind for e in nodes.svc[1].session.events]


async def test_leaving_is_reported_as_left_not_lost(nodes: Nodes) -> None:
    await nodes.start(1)
    await nodes.start(2)
    await both_alive(nodes)
    await nodes.svc[2].stop(Announce(kind="leaving"))
    await until(lambda: nodes.state(1) is PeerState.LEFT, 2, "peer left")
    await asyncio.sleep(nodes.cfg[1].heartbeat.timeout * 1.5)
    assert nodes.state(1) is PeerState.LEFT
    assert nodes.svc[1].session.event_counts["peer_lost"] == 0


async def test_intent_replication_and_persistence_across_restart(nodes: Nodes) -> None:
    s1 = await nodes.start(1)
    await nodes.start(2)
    await both_alive(nodes)
    rec = s1.change_intent(lambda r: dataclasses.replace(r, maintenance=True, bans=(Ban(node="node1", until=2e9, reason="migrate"),)))
    assert not s1.view().intent_acknowledged
    assert s1.status()["intent"]["acknowledged"] is False
    await until(lambda: s1.view().intent_acknowledged, 5, "node2 to acknowledge")
    assert nodes.svc[2].view().intent == rec
    await nodes.svc[2].stop(Announce(kind="restarting", expected=30))
    del nodes.svc[2]
    s2 = await nodes.start(2)
    assert s2.view().intent == rec  # reloaded from disk before hearing node1
    await both_alive(nodes)
    assert s2.view().intent_acknowledged and s1.view().intent_acknowledged


async def test_concurrent_intent_changes_converge(nodes: Nodes) -> None:
    s1 = await nodes.start(1)
    s2 = await nodes.start(2)
    await both_alive(nodes)
    # Both in the same loop iteration: neither has seen the other's change.
    r1 = s1.change_intent(lambda r: dataclasses.replace(r, target_role="stopped"))
    r2 = s2.change_intent(lambda r: dataclasses.replace(r, standby=("node2",)))
    assert r1.version == r2.version
    await until(lambda: s1.view().intent_acknowledged and s2.view().intent_acknowledged, 5, "convergence")
    assert s1.view().intent == s2.view().intent == r2
    assert s1.view().intent_superseded == r1


async def test_requests_are_served_once_and_answered(nodes: Nodes) -> None:
    s1 = await nodes.start(1)
    s2 = await nodes.start(2)
    calls: list[OutdateRequest] = []

    async def outdate(req: OutdateRequest) -> OutdateResult:
        calls.append(req)
        await asyncio.sleep(0.5)  # several heartbeats repeat the request meanwhile
        return OutdateResult(outdated=True, detail=f"{req.resource} outdated")

    s2.requests.register(OUTDATE_DISK, outdate)
    with pytest.raises(RequestUnavailable):
        await s1.requests.call(OUTDATE_DISK, OutdateRequest(resource="r0"), 1.0)  # not heard yet
    await both_alive(nodes)
    await until(lambda: s1.requests.available, 5, "requests available")
    result = await s1.requests.call(OUTDATE_DISK, OutdateRequest(resource="r0", reason="fence-peer"), 5.0)
    assert result == OutdateResult(outdated=True, detail="r0 outdated")
    assert calls == [OutdateRequest(resource="r0", reason="fence-peer")]
    with pytest.raises(RequestFailed, match="no handler"):
        token = GrantToken(grant_id="g1", kind="grant", grantee="node2", grantor_incarnation=1, epoch=Epoch(counter=1, node="node1"))
        await s1.requests.call(HANDOVER_GRANT, GrantRequest(token=token), 5.0)

    async def slow(req: OutdateRequest) -> OutdateResult:
        await asyncio.sleep(10)
        return OutdateResult(outdated=False)

    s1.requests.register(OUTDATE_DISK, slow)
    with pytest.raises(RequestTimeout):
        await s2.requests.call(OUTDATE_DISK, OutdateRequest(resource="r0"), 0.5)


async def test_an_older_peer_gets_no_requests_but_stays_alive(nodes: Nodes) -> None:
    s1 = await nodes.start(1)
    await nodes.start(2, max_version=1)
    await both_alive(nodes)
    await asyncio.sleep(0.5)
    v = s1.view()
    assert v.protocol == 1 and v.sending_version == 1 and not v.drops
    with pytest.raises(RequestUnavailable):
        await s1.requests.call(OUTDATE_DISK, OutdateRequest(resource="r0"), 1.0)


async def test_a_request_outstanding_when_the_peer_restarts_fails(nodes: Nodes) -> None:
    s1 = await nodes.start(1)
    s2 = await nodes.start(2)

    async def never(req: OutdateRequest) -> OutdateResult:
        await asyncio.sleep(60)
        return OutdateResult(outdated=False)

    s2.requests.register(OUTDATE_DISK, never)
    await both_alive(nodes)
    await until(lambda: s1.requests.available, 5, "requests available")
    call = asyncio.ensure_future(s1.requests.call(OUTDATE_DISK, OutdateRequest(resource="r0"), 20.0))
    await until(lambda: s1.requests.outstanding() and s1.requests.outstanding()[0]["accepted"], 5, "node2 to accept")
    await s2.stop(Announce(kind="restarting", expected=5))
    del nodes.svc[2]
    await nodes.start(2)
    with pytest.raises(RequestFailed, match="restarted"):
        await asyncio.wait_for(call, 10)


async def test_a_failing_report_sends_nothing_but_does_not_stop_the_sender(pair: Pair) -> None:
    broken = {"on": False}

    def report() -> NodeReport:
        if broken["on"]:
            raise RuntimeError("bug in the report")
        return REPORT

    s1 = HeartbeatService.open(pair.cfg1, report)
    s2 = HeartbeatService.open(pair.cfg2, lambda: REPORT)
    await s1.start()
    await s2.start()
    try:
        await until(lambda: s2.view().state is PeerState.ALIVE, 10, "node2 hears node1")
        broken["on"] = True
        await until(lambda: s2.view().state is PeerState.LOST, 5, "node2 loses node1: no made-up report")
        assert s1.send_bugs > 0
        broken["on"] = False
        await until(lambda: s2.view().state is PeerState.ALIVE, 5, "the sender carried on")
    finally:
        await s1.stop()
        await s2.stop()


async def test_a_link_held_back_never_rolls_the_peer_report_back(tmp_path: Path) -> None:
    """node2's datagrams on lo1 reach node1 0.45 s late (under the timeout, so each one is fresh),
    those on lo2 at once. node2's report carries a number that only grows (its clock in ms); what
    node1 holds as node2's report must never go back to an older one."""
    pair = make_pair(tmp_path / "lab")
    port = pair.cfg1.heartbeat.port
    n = Nodes(pair)
    n.cfg[2] = via(pair.cfg2, 0, "127.0.0.13")
    loop = asyncio.get_running_loop()
    fwd, _ = await loop.create_datagram_endpoint(lambda: DelayingForwarder(("127.0.0.11", port), 0.45),
                                                 local_addr=("127.0.0.13", port))
    t0 = loop.time()

    def ticking() -> NodeReport:
        return NodeReport(phase="PRIMARY", gateway_score=int((loop.time() - t0) * 1000))

    try:
        s1 = await n.start(1)
        s2 = HeartbeatService.open(n.cfg[2], ticking)
        await s2.start()
        n.svc[2] = s2
        await both_alive(n)
        await until(lambda: s1.view().links[0].up and s1.view().links[1].up, 5, "both links up at node1")
        seen: list[int] = []
        for _ in range(150):  # about 1.5 s: the late link delivers some 15 datagrams meanwhile
            report = s1.view().report
            assert report is not None and report.gateway_score is not None
            seen.append(report.gateway_score)
            await asyncio.sleep(0.01)
        back = [(x, y) for x, y in itertools.pairwise(seen) if y < x]
        assert not back, f"node2's report went back in time at node1 {len(back)} times, e.g. {back[:3]}"
        assert s1.view().state is PeerState.ALIVE and s1.status()["overtaken"] > 0
    finally:
        fwd.close()
        await n.close()


async def test_requests_outstanding_both_ways_do_not_start_a_datagram_storm(nodes: Nodes) -> None:
    """Each node has a request running at the other. A datagram carrying a request used to make
    its receiver send on every link at once, and those datagrams carried its own request: with
    two links, a ping-pong that doubled every round trip and kept both loops busy until the
    handlers returned."""
    s1 = await nodes.start(1)
    s2 = await nodes.start(2)

    async def slow(req: OutdateRequest) -> OutdateResult:
        await asyncio.sleep(1.0)
        return OutdateResult(outdated=True)

    s1.requests.register(OUTDATE_DISK, slow)
    s2.requests.register(OUTDATE_DISK, slow)
    await both_alive(nodes)
    await until(lambda: s1.requests.available and s2.requests.available, 5, "requests available")
    loop = asyncio.get_running_loop()

    def sent() -> int:
        return sum(ln.sent for svc in (s1, s2) for ln in svc.links)

    before, t0 = sent(), loop.time()
    results = await asyncio.gather(s1.requests.call(OUTDATE_DISK, OutdateRequest(resource="r0"), 10.0),
                                   s2.requests.call(OUTDATE_DISK, OutdateRequest(resource="r0"), 10.0))
    elapsed = loop.time() - t0
    assert results == [OutdateResult(outdated=True)] * 2
    # The heartbeats (2 nodes x 2 links per interval), plus a few sends at once per request
    # (ask, accept, answer) on each link.
    cadence = 2 * 2 * (elapsed / nodes.cfg[1].heartbeat.interval + 1)
    assert sent() - before <= cadence + 2 * 2 * 6, f"{sent() - before} datagrams in {elapsed:.2f} s"
