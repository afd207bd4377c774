"""Sequences an attacker on the path (or plain bad luck) can produce, driven on the protocol state machine.

Each test names the sequence it replays. The sessions are wired in memory on a
test clock, so the order of deliveries is exact; test_loopback.py replays the
same attacks over real UDP where timing matters.
"""

from __future__ import annotations

import asyncio
import dataclasses

import pytest

from clever_cluster.daemon.heartbeat import HANDOVER_GRANT, Epoch, GrantRequest, GrantResult, GrantToken, RequestFailed
from clever_cluster.daemon.heartbeat.facts import PeerState
from clever_cluster.daemon.heartbeat.model import Announce, NodeReport
from clever_cluster.daemon.heartbeat.session import Session

from .conftest import Pair, exchange, make_session

T0 = 1000.0


def connected(pair: Pair, report2: NodeReport | None = None, **kw: object) -> tuple[Session, Session, dict[str, NodeReport]]:
    """node1 and node2 hearing each other; node2's report is ``box["r"]`` (change it at will)."""
    box = {"r": report2 or NodeReport(phase="SECONDARY")}
    a = make_session(pair.cfg1, 100)
    b = make_session(pair.cfg2, 200, report=lambda: box["r"], **kw)  # type: ignore[arg-type]
    exchange(a, b, T0)
    exchange(a, b, T0)
    assert a.state is b.state is PeerState.ALIVE
    return a, b, box


# --------------------------------------------------------------------------- facts must not go back in time


def test_a_report_overtaken_on_the_other_link_does_not_replace_the_newer_one(pair: Pair) -> None:
    """Link 1 is slower (or held back by an attacker): "Secondary, no resources" sent before the
    peer promoted arrives after "Primary". It is in order on its own stream and echoes our send
    time well within the timeout, so it proves the peer alive, but it is not the peer's state."""
    a, b, box = connected(pair)
    old = b.datagram(1, T0 + 0.1)  # SECONDARY: held back on link 1
    box["r"] = NodeReport(phase="PRIMARY")
    a.receive(0, b.datagram(0, T0 + 0.4), T0 + 0.4)
    assert a.peer_report is not None and a.peer_report.phase == "PRIMARY"
    a.receive(1, old, T0 + 0.5)
    assert a.peer_report.phase == "PRIMARY"
    assert a.view(T0 + 0.5).report == NodeReport(phase="PRIMARY")
    assert a.links[1].last_heard == T0 + 0.5 and a.state is PeerState.ALIVE  # still proof of life on link 1
    assert a.overtaken == 1


def test_an_announcement_is_not_undone_by_an_older_datagram(pair: Pair) -> None:
    """The peer announces a restart; a datagram it sent before, held back on the other link,
    must not turn it back into "alive" (which would make it "lost" a timeout later, and fenced)."""
    a, b, _box = connected(pair)
    old = b.datagram(1, T0 + 0.1)
    a.receive(0, b.datagram(0, T0 + 0.2, Announce(kind="restarting", expected=30.0)), T0 + 0.2)
    assert a.state is PeerState.RESTARTING
    a.receive(1, old, T0 + 0.3)
    assert a.state is PeerState.RESTARTING and a.view(T0 + 0.3).announce == Announce(kind="restarting", expected=30.0)
    a.poll(T0 + 5)
    assert a.state is PeerState.RESTARTING and "peer_lost" not in [e.kind for e in a.events]


def test_an_acknowledgement_of_the_intent_is_not_taken_back_by_an_older_datagram(pair: Pair) -> None:
    a, b, _box = connected(pair)
    rec = a.intent.change(lambda r: dataclasses.replace(r, maintenance=True), 1.7e9)
    old = b.datagram(1, T0 + 0.1)  # still names the record b held before
    b.receive(0, a.datagram(0, T0 + 0.15), T0 + 0.15)  # b adopts a's change
    a.receive(0, b.datagram(0, T0 + 0.2), T0 + 0.2)
    assert b.intent.record == rec and a.intent.acknowledged
    a.receive(1, old, T0 + 0.3)
    assert a.intent.acknowledged and a.view(T0 + 0.3).intent_acknowledged
    assert [e.kind for e in a.events].count("intent_acknowledged") == 1


# --------------------------------------------------------------------------- requests and incarnations


async def test_a_request_voided_by_the_peers_restart_is_not_sent_to_its_next_incarnation(pair: Pair) -> None:
    """node1 offers a handover grant; node2 restarts before it saw it. node1 learns the new
    incarnation (the call fails: "the peer restarted before answering", the caller decides
    again) and its very next datagram, sent before the caller has run again, must not carry
    the void request to node2's new incarnation, which would acknowledge a grant its grantor
    has written off."""
    a, _b, _box = connected(pair)
    token = GrantToken(grant_id="g1", kind="grant", grantee="node2", grantor_incarnation=100, epoch=Epoch(counter=3, node="node1"))
    call = asyncio.ensure_future(a.requests.call(HANDOVER_GRANT, GrantRequest(token=token), 10.0))
    await asyncio.sleep(0)
    assert a.requests.outstanding()
    acknowledged: list[GrantRequest] = []

    async def grant(req: GrantRequest) -> GrantResult:
        acknowledged.append(req)
        return GrantResult(accepted=True)

    b2 = make_session(pair.cfg2, 201)
    b2.requests.register(HANDOVER_GRANT, grant)
    a.receive(0, b2.datagram(0, T0 + 0.2), T0 + 0.2)
    assert a.restarts == 1
    b2.receive(0, a.datagram(0, T0 + 0.21), T0 + 0.21)  # fresh for b2: echoes its incarnation and send time
    assert b2.state is PeerState.ALIVE
    with pytest.raises(RequestFailed, match="restarted"):
        await call
    await asyncio.sleep(0)
    assert acknowledged == [] and b2.requests.served == 0
