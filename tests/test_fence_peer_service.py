"""The fence-peer service's decisions, with in-memory parts (the lab scenarios are in
test_fence_peer_scenarios.py)."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

import pytest

from clever_cluster.daemon.drbd.adapter import OutdateResult
from clever_cluster.daemon.drbd.model import ConnState, DiskState, DrbdFacts, Role, SafetyReport
from clever_cluster.daemon.fence_peer import (
    FenceOutcome,
    FencePeerService,
    FenceResult,
    OutdateResponder,
    PeerOutdate,
    PeerUnreachable,
    Verdict,
    check_env,
    fencing_suspended,
)

from .fence_world import Local

ENV = {"DRBD_RESOURCE": "r0", "DRBD_PEER_NODE_ID": "1", "DRBD_NODE_ID_1": "node2"}
FROZEN = DrbdFacts(backend="drbd9", resource="r0", known=True, role=Role.PRIMARY, connection=ConnState.CONNECTING,
                   disk=DiskState.UPTODATE, peer_disk=DiskState.DUNKNOWN, suspended=frozenset({"fencing"}))


@dataclasses.dataclass
class Drbd:
    f: DrbdFacts = FROZEN
    resumed: int = 0
    outdates: int = 0

    def facts(self) -> DrbdFacts:
        return self.f

    async def wait_change(self, timeout: float) -> DrbdFacts:
        await asyncio.sleep(0)
        return self.f

    async def resume_io(self) -> None:
        self.resumed += 1
        self.f = dataclasses.replace(self.f, suspended=frozenset())

    async def outdate(self, timeout: float) -> OutdateResult:
        self.outdates += 1
        return OutdateResult.OUTDATED


@dataclasses.dataclass
class Peer:
    heard: list[bool] = dataclasses.field(default_factory=lambda: [True])
    reply: PeerOutdate | None = dataclasses.field(default_factory=lambda: PeerOutdate(True, "disk Outdated"))
    calls: int = 0

    def peer_heard(self) -> bool:
        return self.heard[0] if len(self.heard) == 1 else self.heard.pop(0)

    async def request_outdate(self, resource: str) -> PeerOutdate:
        self.calls += 1
        if self.reply is None:
            raise PeerUnreachable("gone")
        return self.reply


@dataclasses.dataclass
class Fencer:
    outcome: FenceOutcome = FenceOutcome.CONFIRMED
    record: str | None = "rec-1"
    calls: int = 0

    async def fence_for_drbd(self, reason: str) -> FenceResult:
        self.calls += 1
        return FenceResult(self.outcome, "test")

    def record_for_current_episode(self) -> str | None:
        return self.record if self.calls or self.outcome is FenceOutcome.CONFIRMED else None


def service(local: Local | None = None, peer: Peer | None = None, fencer: Fencer | None = None, drbd: Drbd | None = None,
            clock: Any = None) -> FencePeerService:
    kw: dict[str, Any] = {} if clock is None else {"clock": clock}
    return FencePeerService("r0", "node2", local=local or Local(), peer=peer or Peer(), fencer=fencer or Fencer(),
                            drbd=drbd or Drbd(), **kw)


async def test_heard_peer_is_outdated_not_fenced() -> None:
    f = Fencer()
    v, _, rec = await service(fencer=f).fence_peer(ENV)
    assert (v, rec, f.calls) == (Verdict.PEER_OUTDATED, None, 0)


async def test_unheard_peer_is_fenced_with_a_record_only() -> None:
    assert (await service(peer=Peer(heard=[False])).fence_peer(ENV))[0] is Verdict.PEER_FENCED
    v, reason, _ = await service(peer=Peer(heard=[False]), fencer=Fencer(record=None)).fence_peer(ENV)
    assert v is Verdict.REFUSED and "no record" in reason
    for outcome in (FenceOutcome.FAILED, FenceOutcome.NOT_ALLOWED):
        assert (await service(peer=Peer(heard=[False]), fencer=Fencer(outcome=outcome)).fence_peer(ENV))[0] is Verdict.REFUSED


async def test_peer_going_silent_during_the_request_falls_back_to_fencing() -> None:
    f = Fencer()
    v, _, _ = await service(peer=Peer(heard=[True, False], reply=None), fencer=f).fence_peer(ENV)
    assert v is Verdict.PEER_FENCED and f.calls == 1


@pytest.mark.parametrize(("phase", "valid", "heard", "expect"), [
    ("SECONDARY", True, True, Verdict.REFUSED),
    ("SECONDARY", True, False, Verdict.REFUSED),
    ("FENCING", True, False, Verdict.REFUSED),
    ("PRIMARY", False, True, Verdict.REFUSED),
    ("PROMOTING", False, False, Verdict.REFUSED),
    ("PROMOTING", True, False, Verdict.PEER_FENCED),
    ("MAINTENANCE", True, True, Verdict.PEER_OUTDATED),  # S6: a Primary in maintenance may still outdate
    ("MAINTENANCE", True, False, Verdict.REFUSED),  # ... but never fences
])
async def test_only_an_active_node_under_a_valid_gate(phase: str, valid: bool, heard: bool, expect: Verdict) -> None:
    f = Fencer()
    v, _, _ = await service(Local(phase, valid), Peer(heard=[heard]), f).fence_peer(ENV)
    assert v is expect
    if expect is Verdict.REFUSED:
        assert f.calls == 0


async def test_peer_refusal_is_refused() -> None:
    v, _, _ = await service(peer=Peer(reply=PeerOutdate(False, "this node is DRBD Primary"))).fence_peer(ENV)
    assert v is Verdict.REFUSED


async def test_a_bug_in_a_dependency_is_refused() -> None:
    class Broken(Peer):
        async def request_outdate(self, resource: str) -> PeerOutdate:
            raise RuntimeError("bug")
    assert (await service(peer=Broken()).fence_peer(ENV))[0] is Verdict.REFUSED


@pytest.mark.parametrize(("env", "ok"), [
    (ENV, True),
    ({"DRBD_RESOURCE": "r0", "DRBD_PEER": "node2"}, True),
    ({"DRBD_RESOURCE": "r0", "DRBD_PEER_NODE_ID": "1"}, True),
    ({"DRBD_RESOURCE": "r1", "DRBD_PEER": "node2"}, False),
    ({"DRBD_RESOURCE": "r0", "DRBD_PEER": "node3"}, False),
    ({"DRBD_RESOURCE": "r0", "DRBD_PEERS": "node2 node3"}, False),
    ({"DRBD_RESOURCE": "r0"}, False),
    ({"DRBD_RESOURCE": "r0", "DRBD_PEER_NODE_ID": "x"}, False),
    ({"DRBD_PEER": "node2"}, False),
])
def test_environment_checks(env: dict[str, str], ok: bool) -> None:
    assert (check_env(env, "r0", "node2") is None) is ok


async def test_resume_needs_record_or_current_ack_and_no_handler() -> None:
    now = [100.0]
    d = Drbd()
    svc = service(drbd=d, fencer=Fencer(outcome=FenceOutcome.FAILED, record=None), clock=lambda: now[0])
    assert not await svc.maybe_resume()
    d.f = dataclasses.replace(FROZEN, fence_peer_running=True)
    svc.outdate_ack, svc._ack_at = "peer outdated", 101.0
    assert not await svc.maybe_resume()  # DRBD's handler is still running: DRBD decides
    d.f = FROZEN
    now[0] = 102.0
    assert await svc.maybe_resume() and d.resumed == 1


async def test_an_ack_from_an_earlier_freeze_lapses() -> None:
    now = [100.0]
    d = Drbd(f=dataclasses.replace(FROZEN, suspended=frozenset()))
    svc = service(drbd=d, fencer=Fencer(outcome=FenceOutcome.FAILED, record=None), clock=lambda: now[0])
    svc.outdate_ack, svc._ack_at = "old", 99.0
    now[0] = 105.0
    assert not await svc.maybe_resume()  # not frozen now: seen clear after the ack
    d.f = FROZEN  # a new freeze
    now[0] = 110.0
    assert not await svc.maybe_resume() and d.resumed == 0 and svc.outdate_ack is None


def test_84_suspension_is_taken_as_fencing_only_when_it_can_be() -> None:
    f84 = dataclasses.replace(FROZEN, backend="drbd84", suspended=frozenset({"unspecified"}),
                              settings=SafetyReport((), "resource-and-stonith"))
    assert fencing_suspended(f84)
    assert not fencing_suspended(dataclasses.replace(f84, connection=ConnState.CONNECTED))
    assert not fencing_suspended(dataclasses.replace(f84, settings=SafetyReport((), "resource-only")))
    assert not fencing_suspended(dataclasses.replace(f84, peer_disk=DiskState.OUTDATED))
    assert not fencing_suspended(DrbdFacts.unknown("drbd84", "r0", "x"))


async def test_outdate_responder_never_outdates_a_primary() -> None:
    d = Drbd(f=dataclasses.replace(FROZEN, role=Role.PRIMARY))
    assert not (await OutdateResponder("r0", d).handle("r0")).outdated and d.outdates == 0
    d.f = dataclasses.replace(FROZEN, role=Role.SECONDARY)
    assert (await OutdateResponder("r0", d).handle("r0")).outdated and d.outdates == 1
    assert not (await OutdateResponder("r0", d).handle("r1")).outdated


async def test_after_a_success_verdict_drbd_resumes_not_the_daemon() -> None:
    now = [100.0]
    d = Drbd()
    svc = service(drbd=d, clock=lambda: now[0])
    assert (await svc.fence_peer(ENV))[0] is Verdict.PEER_OUTDATED
    now[0] = 101.0
    assert not await svc.maybe_resume()  # the handler is exiting 4; DRBD resumes by itself
    now[0] = 106.0
    assert await svc.maybe_resume() and d.resumed == 1  # it did not (the handler died): the ack is in hand
