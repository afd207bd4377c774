"""Sequences an attacker on the path (or plain bad luck) can produce, driven on the protocol state machine.

Each test names the sequence it replays. The sessions are wired in memory on a
test clock, so the order of deliveries is exact; test_loopback.py replays the
same attacks over real UDP where timing matters.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json

import pytest

from clever_cluster.daemon import config as config_mod
from clever_cluster.daemon.heartbeat import (
    HANDOVER_GRANT,
    OUTDATE_DISK,
    Epoch,
    GrantRequest,
    GrantResult,
    GrantToken,
    OutdateRequest,
    OutdateResult,
    RequestFailed,
    model,
)
from clever_cluster.daemon.heartbeat.facts import PeerState
from clever_cluster.daemon.heartbeat.model import Announce, NodeReport
from clever_cluster.daemon.heartbeat.session import Session
from clever_cluster.daemon.heartbeat.wire import MAX_DATAGRAM

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


# --------------------------------------------------------------------------- a report too large for one datagram


def renamed(pair: Pair, n1: str, n2: str, cluster: str = "democluster") -> Pair:
    def rename(cfg: config_mod.Config, node: str, peer: str) -> config_mod.Config:
        return dataclasses.replace(cfg, cluster=dataclasses.replace(cfg.cluster, name=cluster, node=node, peer=peer))
    return dataclasses.replace(pair, cfg1=rename(pair.cfg1, n1, n2), cfg2=rename(pair.cfg2, n2, n1))


async def test_a_handover_that_does_not_fit_one_datagram_sheds_the_intent_record_never_report_facts(pair: Pair) -> None:
    """Node names of 39 characters (63 are allowed); node1 hands over (clevervm migrate): its ban is not yet
    acknowledged, four earlier cleanups ride in the intent record, its report carries the
    grant, its epoch and the incarnation of node2 it once fenced, and the grant request is
    outstanding. That does not fit 1232 bytes. The report used to be cut to its phase: node2
    read "no epoch, no grant, fenced nothing" (facts node1 never sent), and neither the request
    nor the intent went out. What can wait (the intent record) must go first."""
    n1, n2 = "clevervm-production-plant-one-node-0001", "clevervm-production-plant-one-node-0002"
    p = renamed(pair, n1, n2)
    epoch = model.Epoch(counter=41, node=n1)
    episode = model.EpisodeId(peer=n2, peer_incarnation=1_700_000_123, peer_boot_id="6f1c2c1e-8a43-4a8e-9d1f-0a3f5d1e2b77", counter=7)
    token = GrantToken(grant_id="h-1700000123-000042", kind="grant", grantee=n2, grantor_incarnation=100, epoch=epoch)
    report = NodeReport(
        phase="DEMOTING", epoch=epoch, gateway_score=200, eligible=True, grant=token,
        resources=model.ResourceSummary(drbd=model.DrbdReport(role="Secondary", disk="UpToDate", peer_disk="UpToDate",
                                                              connection="Connected", data_uuid="3A1F0C2D9E8B7A65"), mounted=False, ip=False),
        fencing=model.FencingReport(fenced=model.FencedIncarnation(node=n2, incarnation=1_700_000_001, episode=episode)))
    a = make_session(p.cfg1, 100, report=lambda: report)
    b = make_session(p.cfg2, 200)
    exchange(a, b, T0)
    exchange(a, b, T0)
    for i in range(4):
        a.intent.change(lambda r, i=i: dataclasses.replace(r, cleanups=(*r.cleanups, model.Cleanup(
            serial=i + 1, at=1.7e9, resource=f"plc-production-controller-{i:02d}", node=n1))), 1.7e9)
    exchange(a, b, T0 + 0.1)
    assert a.intent.acknowledged
    ban = a.intent.change(lambda r: dataclasses.replace(r, bans=(model.Ban(node=n1, reason="migrate"),)), 1.7e9)
    accepted: list[GrantRequest] = []

    async def grant(req: GrantRequest) -> GrantResult:
        accepted.append(req)
        return GrantResult(accepted=True)

    b.requests.register(HANDOVER_GRANT, grant)
    call = asyncio.ensure_future(a.requests.call(HANDOVER_GRANT, GrantRequest(token=token), 10.0))
    await asyncio.sleep(0)
    data = a.datagram(0, T0 + 0.2)
    assert len(data) <= MAX_DATAGRAM
    b.receive(0, data, T0 + 0.2)
    assert b.peer_report == report  # every fact, as sent
    await asyncio.sleep(0)
    assert accepted == [GrantRequest(token=token)]  # the request went out
    a.receive(0, b.datagram(0, T0 + 0.25), T0 + 0.25)
    assert await call == GrantResult(accepted=True)
    for k in range(3):  # the intent record follows once there is room
        exchange(a, b, T0 + 0.3 + k * 0.1)
    assert b.intent.record == ban and a.intent.acknowledged
    assert b.peer_report == report


def test_a_report_that_cannot_fit_is_not_sent_cut_short(pair: Pair) -> None:
    """63-character cluster and node names (the most the configuration allows) and every field
    of the report at its bound: even alone it exceeds a datagram. Nothing is sent (the service counts it and
    logs why) rather than a phase whose missing facts the peer would read as "none"."""
    n1, n2 = "a" * 63, "b" * 63
    p = renamed(pair, n1, n2, cluster="c" * 63)
    big = 2**64 - 1
    epoch = model.Epoch(counter=big, node=n1)
    episode = model.EpisodeId(peer=n2, peer_incarnation=big, peer_boot_id="x" * 36, counter=big)
    report = NodeReport(
        phase="MAINTENANCE", epoch=epoch, gateway_score=1_000_000, eligible=False, ineligible_reasons=("r" * 40,) * 4,
        resources=model.ResourceSummary(drbd=model.DrbdReport(role="Secondary", disk="Inconsistent", peer_disk="Inconsistent",
                                                              connection="StandAlone", data_uuid="3A1F0C2D9E8B7A65", split_brain=True),
                                        mounted=True, ip=True),
        grant=GrantToken(grant_id="g" * 32, kind="yield", grantee=n2, grantor_incarnation=big, epoch=epoch),
        grant_reply=model.GrantReply(grant_id="g" * 32, accepted=False),
        fencing=model.FencingReport(open_episode=episode, fenced=model.FencedIncarnation(node=n2, incarnation=big, episode=episode),
                                    fence_in_progress=True))
    a = make_session(p.cfg1, 100, report=lambda: report)
    with pytest.raises(ValueError, match="does not fit"):
        a.datagram(0, T0)


# --------------------------------------------------------------------------- a state directory that cannot be written


def test_a_full_state_directory_does_not_make_a_restarted_peer_lost(pair: Pair, monkeypatch: pytest.MonkeyPatch,
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    """node1's state directory is full (or read-only) when node2's daemon restarts. The new
    incarnation could not be persisted as the replay floor, and every datagram of it was dropped:
    node2, alive and heard on both links, became lost, and would be fenced. The floor on disk
    only guards against recordings after node1's own restart, which freshness rejects anyway;
    so the datagrams are taken, and the failure is said once (and once for an intent record
    that cannot be adopted, not with every datagram that offers it)."""
    from clever_cluster.daemon.heartbeat import intent as intent_mod
    from clever_cluster.daemon.heartbeat import replay

    a, _b, _box = connected(pair)

    def full(path: object, obj: object) -> None:
        raise OSError(28, "No space left on device")

    b2 = make_session(pair.cfg2, 201)
    rec = b2.intent.change(lambda r: dataclasses.replace(r, maintenance=True), 1.7e9)
    monkeypatch.setattr(replay, "atomic_write_json", full)  # from here on, for node2 as well
    monkeypatch.setattr(intent_mod, "atomic_write_json", full)
    t = T0
    for _ in range(30):
        t += 0.1
        exchange(a, b2, t)
        a.poll(t)
    assert a.state is PeerState.ALIVE and a.view(t).incarnation == 201 and a.restarts == 1
    assert "peer_lost" not in [e.kind for e in a.events] and not a.drops
    said = [r.getMessage() for r in caplog.records if "cannot persist node2's" in r.getMessage() or "admin intent" in r.getMessage()]
    assert len(said) == 2, said  # once for the incarnation, once for the intent record: not per datagram
    assert all("No space left" in m for m in said)
    assert a.intent.record != rec and not b2.intent.acknowledged  # not adopted: it could not be persisted
    monkeypatch.undo()
    exchange(a, b2, t + 0.05)
    exchange(a, b2, t + 0.06)
    assert a.intent.record == rec and b2.intent.acknowledged
    b3 = make_session(pair.cfg2, 202)  # once the directory is writable again, the floor follows
    exchange(a, b3, t + 0.1)
    assert json.loads((pair.cfg1.cluster.state_dir / "peer-incarnation.json").read_text())["incarnation"] == 202


# --------------------------------------------------------------------------- corrupted state files


@pytest.mark.parametrize(("name", "content", "problem"), [
    ("peer-incarnation.json", "[]", "unreadable"),
    ("peer-incarnation.json", "null", "unreadable"),
    ("peer-incarnation.json", "5", "unreadable"),
    ("incarnation.json", '{"incarnation": 18446744073709551615}', "64 bits"),
    ("incarnation.json", '{"incarnation": 100000000000000000000000}', "64 bits"),
])
def test_a_corrupted_state_file_stops_the_start_with_a_clear_error(pair: Pair, name: str, content: str, problem: str) -> None:
    """A state file that is valid JSON but not what was written: a peer floor that is not an
    object used to end the start in a traceback; an incarnation at the top of the 64-bit range
    started a daemon that could never send a datagram (its next incarnation does not fit the
    envelope), so its peer would lose it for good."""
    from clever_cluster.daemon.heartbeat import HeartbeatError, HeartbeatService

    state = pair.cfg1.cluster.state_dir
    state.mkdir(parents=True, exist_ok=True)
    (state / name).write_text(content)
    with pytest.raises(HeartbeatError, match=problem):
        HeartbeatService.open(pair.cfg1, lambda: NodeReport(phase="SECONDARY"))
    assert (state / name).read_text() == content  # nothing lost


async def test_a_hung_handler_neither_piles_up_runs_nor_grows_memory() -> None:
    """This node's outdate handler hangs (drbdadm stuck on a device); the peer's fence-peer path
    times out and asks again, and again. Each new request started one more concurrent run of the
    handler, and an unfinished request at the head of the table stopped any answered one from
    being forgotten: runs and memory grew with every request for as long as the hang lasted."""
    from clever_cluster.daemon.heartbeat.requests import MAX_OUTSTANDING, REMEMBER, RequestChannel, _pack
    from clever_cluster.daemon.heartbeat.wire import RequestMsg

    ch = RequestChannel(kick=lambda: None)
    started: list[OutdateRequest] = []
    hang = asyncio.Event()

    async def outdate(req: OutdateRequest) -> OutdateResult:
        started.append(req)
        await hang.wait()
        return OutdateResult(outdated=True)

    ch.register(OUTDATE_DISK, outdate)
    payload = _pack(OutdateRequest(resource="r0"))
    try:
        for rid in range(1, 501):
            ch.on_requests((RequestMsg(rid=rid, kind=OUTDATE_DISK.name, payload=payload),), float(rid))
            await asyncio.sleep(0)
        assert len(started) == MAX_OUTSTANDING
        assert len(ch._in) <= REMEMBER + MAX_OUTSTANDING
        last = ch.answers(500.0)[-1]
        assert last.rid == 500 and last.status == "error" and "still running" in last.error  # told at once, not left hanging
        hang.set()
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        ch.on_requests((RequestMsg(rid=501, kind=OUTDATE_DISK.name, payload=payload),), 501.0)
        await asyncio.sleep(0)
        assert len(started) == MAX_OUTSTANDING + 1  # served again once the runs ended
    finally:
        await ch.close()


# --------------------------------------------------------------------------- a stalled loop at the stop


async def test_a_sender_stopped_in_the_iteration_its_timer_fired_logs_no_traceback() -> None:
    """Under load (a burst of garbage on both links did it), the stop cancelled a sender whose
    wake-up timer had already fired in the same loop iteration; the timer then set the result of
    the cancelled future: 'Exception in callback ... InvalidStateError' in the journal."""
    import time

    from clever_cluster.daemon.heartbeat.service import sleep_until

    loop = asyncio.get_running_loop()
    errors: list[dict[str, object]] = []
    loop.set_exception_handler(lambda _loop, ctx: errors.append(ctx))
    try:
        when = loop.time() + 0.05
        task = asyncio.create_task(sleep_until(when))
        await asyncio.sleep(0)  # the sender waits for its timer
        loop.call_at(when - 0.01, task.cancel)  # the stop, due just before it
        time.sleep(0.1)  # the loop is held: both are due in the same iteration, the stop first
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.sleep(0)
        assert errors == []
    finally:
        loop.set_exception_handler(None)


# --------------------------------------------------------------------------- a dead peer kept alive by a held-back datagram


def test_a_last_datagram_held_back_does_not_postpone_the_loss(pair: Pair) -> None:
    """node2 dies right after sending at T0+0.5; its datagram on link 0 is lost, the one on link 1
    held back by an attacker and released 0.8 s later, still under the timeout. It proves node2
    was alive when it sent it, not when it arrived: counted from its arrival, the loss came a
    whole timeout later than silence allows (up to twice the timeout after the death, each time
    the attacker holds back the last datagram)."""
    a, b, _box = connected(pair)
    t = T0
    for _ in range(4):
        t += 0.1
        exchange(a, b, t)
    b.datagram(0, T0 + 0.5)  # lost
    held = b.datagram(1, T0 + 0.5)  # node2's last datagram: it dies now
    a.poll(T0 + 1.3)
    assert a.state is PeerState.ALIVE  # heard at T0+0.4 on link 0: lost only at T0+1.4
    a.receive(1, held, T0 + 1.3)
    assert a.drops == {} and a.state is PeerState.ALIVE  # fresh: sent 0.8 s ago
    a.poll(T0 + 1.5)
    assert a.state is PeerState.LOST
    lost = next(e for e in a.events if e.kind == "peer_lost")
    assert lost.mono == T0 + 1.5 and a.view(T0 + 1.5).last_heard == pytest.approx(T0 + 0.5)
    assert a.view(T0 + 1.5).report_age == pytest.approx(1.0)  # an upper bound on the report's age, not its time here


def test_this_nodes_incarnation_gone_backwards_is_explained_here_too(pair: Pair, caplog: pytest.LogCaptureFixture) -> None:
    """node1 lost its state directory and its clock is behind: it restarts with an incarnation
    below the one node2 knows. node2 drops its datagrams as replays (and says so); node1 only
    saw node2's datagrams as 'unconfirmed', forever, with nothing in its own log, while node2
    lost it (and could fence it at every boot). node1 now says what happened and what to do."""
    a = make_session(pair.cfg1, 500)
    b = make_session(pair.cfg2, 200)
    exchange(a, b, T0)
    exchange(a, b, T0)
    assert a.state is b.state is PeerState.ALIVE
    a2 = make_session(pair.cfg1, 400)  # node1 again, its incarnation below what node2 heard
    t = T0
    for _ in range(5):
        t += 0.1
        exchange(a2, b, t)
    assert a2.state is PeerState.UNSEEN and b.drops["replay"] == 10
    said = [r.getMessage() for r in caplog.records if "this node's incarnation" in r.getMessage()]
    assert len(said) == 1 and "400" in said[0] and "500" in said[0] and "incarnation.json" in said[0]
