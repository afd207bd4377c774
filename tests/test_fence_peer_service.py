"""The fence-peer service: a waiting handler is a fact, the policy's answer goes through the guards."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest

from clever_cluster.daemon.drbd.model import ConnState, DiskState, DrbdFacts, Role, SafetyReport
from clever_cluster.daemon.fence_peer import FencePeerService, Verdict, check_env, fencing_suspended, handler_exit

ENV = {"DRBD_RESOURCE": "r0", "DRBD_PEER_NODE_ID": "1", "DRBD_NODE_ID_1": "node2"}


@dataclasses.dataclass
class Evidence:
    record: str | None = None
    outdated_since: float | None = None  # the peer's disk was seen Outdated at this time
    connected: bool = False

    def fence_record_id(self) -> str | None:
        return self.record

    def peer_disk_outdated(self, since: float) -> str | None:
        if self.outdated_since is not None and self.outdated_since >= since:
            return "its report says Outdated"
        return None

    def drbd_connected(self) -> bool:
        return self.connected


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def make(ev: Evidence) -> tuple[FencePeerService, list[bool], Clock]:
    clock = Clock()
    changes: list[bool] = []
    svc = FencePeerService("r0", "node2", ev, clock=clock)
    svc.on_change = lambda: changes.append(svc.pending)
    return svc, changes, clock


async def ask(svc: FencePeerService) -> asyncio.Task[tuple[Verdict, str, str | None]]:
    t = asyncio.create_task(svc.fence_peer(ENV))
    for _ in range(5):
        await asyncio.sleep(0)
    return t


async def test_a_waiting_handler_is_a_fact_until_the_policy_answers() -> None:
    ev = Evidence(record="node2/5/b/3")
    svc, changes, _ = make(ev)
    assert not svc.pending
    t = await ask(svc)
    assert svc.pending and changes == [True] and not t.done()
    assert svc.answer(7, "fenced by bmc") == 7
    verdict, _, record = await t
    assert (verdict, record) == (Verdict.PEER_FENCED, "node2/5/b/3")
    assert not svc.pending and changes[-1] is False
    assert handler_exit("fence-peer", {"verdict": verdict.value, "record": record}) == 7


@pytest.mark.parametrize("code, ev, expect", [
    (7, Evidence(record=None), Verdict.REFUSED),                     # 7 needs a record of the current episode
    (4, Evidence(outdated_since=None), Verdict.REFUSED),             # 4 needs the peer's disk seen Outdated
    (4, Evidence(outdated_since=99.0), Verdict.REFUSED),             # ... seen after the handler asked
    (4, Evidence(outdated_since=100.5), Verdict.PEER_OUTDATED),
    (3, Evidence(record="r", outdated_since=200.0), Verdict.REFUSED),  # never 3, 5 or 6
    (5, Evidence(record="r", outdated_since=200.0), Verdict.REFUSED),
    (6, Evidence(record="r", outdated_since=200.0), Verdict.REFUSED),
    (1, Evidence(record="r", outdated_since=200.0), Verdict.REFUSED),
])
async def test_guards(code: int, ev: Evidence, expect: Verdict) -> None:
    svc, _, _ = make(ev)
    t = await ask(svc)
    given = svc.answer(code)
    verdict, _, _ = await t
    assert verdict is expect
    assert given == {Verdict.REFUSED: 1, Verdict.PEER_OUTDATED: 4, Verdict.PEER_FENCED: 7}[verdict]
    assert svc.guard_refusals == (1 if code != 1 and verdict is Verdict.REFUSED else 0)


async def test_every_waiting_handler_gets_the_answer() -> None:
    svc, _, _ = make(Evidence(record="r"))
    a, b = await ask(svc), await ask(svc)
    svc.answer(7)
    assert [(await a)[0], (await b)[0]] == [Verdict.PEER_FENCED] * 2


async def test_bad_environment_is_refused_without_waiting() -> None:
    svc, changes, _ = make(Evidence(record="r"))
    verdict, reason, _ = await svc.fence_peer({"DRBD_RESOURCE": "r9", "DRBD_PEER": "node2"})
    assert verdict is Verdict.REFUSED and "r9" in reason and not changes


async def test_a_freeze_that_ended_answers_1_and_the_daemon_stopping_too() -> None:
    ev = Evidence(record="r")
    svc, _, _ = make(ev)
    t = await ask(svc)
    svc.drop_stale()
    assert svc.pending  # DRBD not Connected: still waiting
    ev.connected = True
    svc.drop_stale()
    assert (await t)[0] is Verdict.REFUSED and not svc.pending
    t = await ask(svc)
    svc.close()
    assert (await t)[0] is Verdict.REFUSED


@pytest.mark.parametrize("env, ok", [
    (ENV, True),
    ({"DRBD_RESOURCE": "r0", "DRBD_PEER": "node2"}, True),
    ({"DRBD_RESOURCE": "r0"}, False),
    ({"DRBD_RESOURCE": "r0", "DRBD_PEER": "node3"}, False),
    ({"DRBD_RESOURCE": "r0", "DRBD_PEER_NODE_ID": "x"}, False),
    ({"DRBD_PEER": "node2"}, False),
])
def test_environment_checks(env: dict[str, str], ok: bool) -> None:
    assert (check_env(env, "r0", "node2") is None) is ok


def test_84_suspension_is_taken_as_fencing_only_when_it_can_be() -> None:
    base = DrbdFacts(backend="drbd84", resource="r0", known=True, role=Role.PRIMARY, connection=ConnState.CONNECTING,
                     disk=DiskState.UPTODATE, peer_disk=DiskState.DUNKNOWN, suspended=frozenset({"unspecified"}),
                     settings=SafetyReport((), fencing="resource-and-stonith"))
    assert fencing_suspended(base)
    assert not fencing_suspended(dataclasses.replace(base, role=Role.SECONDARY))
    assert not fencing_suspended(dataclasses.replace(base, settings=SafetyReport((), fencing="resource-only")))
    assert fencing_suspended(dataclasses.replace(base, suspended=frozenset({"fencing"}), settings=None))
