"""The group executor: order, rollback of exactly what ran, gates, retries, timings, waiting."""

from __future__ import annotations

import asyncio

import pytest

from clever_cluster.daemon.resources.base import ImageToken, StartRequest, StopRequest
from clever_cluster.daemon.resources.drbd import DrbdStep
from clever_cluster.daemon.resources.facts import ResourceFailure, RunRecord
from clever_cluster.daemon.resources.group import GroupExecutor
from tests.resources.helpers import FakeClock, FakeStep, Gate, SimDrbd, until

NAMES = ["drbd", "filesystem", "ip", "vms"]
START = StartRequest(token="episode-7", takeover="failover")


def _group(log: list[tuple[str, str]], gate: Gate | None = None, clock: FakeClock | None = None,
           facts: list[object] | None = None) -> tuple[GroupExecutor, SimDrbd, dict[str, FakeStep]]:
    drbd = SimDrbd(log)
    fakes = {n: FakeStep(n, log, clock=clock) for n in NAMES[1:]}
    kw = {"clock": clock} if clock else {}
    ex = GroupExecutor([DrbdStep(drbd, command_timeout=5), *fakes.values()], gate or Gate(),
                       on_fact=facts.append if facts is not None else None, retry_delay=0.01, **kw)
    return ex, drbd, fakes


async def test_start_runs_in_order_and_stop_in_reverse() -> None:
    log: list[tuple[str, str]] = []
    ex, drbd, _ = _group(log)
    rec = await ex.start(START)
    assert rec.outcome == "succeeded" and rec.held == tuple(NAMES)
    assert log == [("promote", "drbd"), ("start", "filesystem"), ("start", "ip"), ("start", "vms")]
    assert drbd.current == "Primary"
    log.clear()
    rec = await ex.stop(StopRequest(token="grant-3"))
    assert rec.outcome == "succeeded" and rec.held == ()
    assert log == [("stop", "vms"), ("stop", "ip"), ("stop", "filesystem"), ("demote", "drbd")]
    assert drbd.current == "Secondary"


@pytest.mark.parametrize("failing", NAMES)
async def test_failure_at_each_step_rolls_back_exactly_what_ran(failing: str) -> None:
    log: list[tuple[str, str]] = []
    facts: list[object] = []
    ex, drbd, fakes = _group(log, facts=facts)
    if failing == "drbd":
        drbd.refuse_promote = True
    else:
        fakes[failing].fail_start = True
    rec = await ex.start(START)
    k = NAMES.index(failing)
    ran = NAMES[: k + 1]
    started = [("promote" if n == "drbd" else "start", n) for n in ran]
    # The failing step's own stop runs too (it is idempotent and undoes any part of it), then the
    # earlier ones in reverse; later steps are never touched.
    undone = [("demote" if n == "drbd" else "stop", n) for n in reversed(ran) if not (n == "drbd" and failing == "drbd")]
    assert log == started + undone
    assert rec.outcome == "rolled_back" and rec.held == ()
    assert drbd.current == "Secondary"
    assert [(p.step, p.action, p.outcome) for p in rec.phases] == (
        [(n, "start", "ok") for n in ran[:-1]] + [(failing, "start", "failed")] + [(n, "rollback", "ok") for n in reversed(ran)])
    failures = [f for f in facts if isinstance(f, ResourceFailure)]
    assert [(f.resource, f.action) for f in failures] == [(failing, "start")]
    assert "refused" in (rec.error or "") or "UpToDate" in (rec.error or "")


async def test_gate_stale_before_a_step_stops_the_sequence_without_running_it() -> None:
    log: list[tuple[str, str]] = []
    gate = Gate()
    ex, _, fakes = _group(log, gate=gate)
    real_start = fakes["filesystem"].start

    async def start_then_withdraw(ctx: object) -> None:
        await real_start(ctx)  # type: ignore[arg-type]
        gate.stale = "peer heard again: loss episode 7 closed"

    fakes["filesystem"].start = start_then_withdraw  # type: ignore[method-assign]
    rec = await ex.start(START)
    assert ("start", "ip") not in log and ("start", "vms") not in log
    assert log[-2:] == [("stop", "filesystem"), ("demote", "drbd")]
    assert rec.outcome == "stale" and "episode 7 closed" in (rec.error or "")
    assert not ex.failures  # a stale gate is not a resource failure
    assert rec.phases[2].step == "ip" and rec.phases[2].outcome == "stale" and rec.phases[2].attempts == 0


async def test_gate_going_stale_while_progress_is_published_is_caught() -> None:
    """Regression (red team): the progress fact for a step used to be published after its gate
    check, so a consumer reacting to it could invalidate the gate just before the step ran."""
    log: list[tuple[str, str]] = []
    gate = Gate()

    def on_fact(fact: object) -> None:
        if isinstance(fact, RunRecord) and fact.current == "ip":
            gate.stale = "the policy decided otherwise on this very fact"

    drbd = SimDrbd(log)
    steps = [DrbdStep(drbd, 5), *(FakeStep(n, log) for n in NAMES[1:])]
    rec = await GroupExecutor(steps, gate, on_fact=on_fact).start(START)
    assert ("start", "ip") not in log
    assert rec.outcome == "stale" and drbd.current == "Secondary"


async def test_gate_that_raises_counts_as_stale() -> None:
    log: list[tuple[str, str]] = []

    def broken(token: object) -> str | None:
        raise KeyError("no such episode")

    ex = GroupExecutor([DrbdStep(SimDrbd(log), 5)], broken)
    rec = await ex.start(START)
    assert rec.outcome == "stale" and "gate check failed" in (rec.error or "")
    assert log == []


async def test_start_step_past_its_deadline_fails_and_rolls_back() -> None:
    log: list[tuple[str, str]] = []
    ex, drbd, fakes = _group(log)
    fakes["ip"].hang_start = True
    fakes["ip"].budget = 0.2
    rec = await ex.start(START)
    assert rec.outcome == "rolled_back" and "did not finish within 0.2 s" in (rec.error or "")
    assert drbd.current == "Secondary" and ("start", "vms") not in log


async def test_failed_stop_is_retried_then_reported_and_lower_steps_are_kept() -> None:
    log: list[tuple[str, str]] = []
    facts: list[object] = []
    ex, drbd, fakes = _group(log, facts=facts)
    await ex.start(START)
    fakes["filesystem"].stop_attempts = 3
    fakes["filesystem"].stop_failures = 2
    rec = await ex.stop(StopRequest(token=None))
    assert rec.outcome == "succeeded"
    assert [p.attempts for p in rec.phases if p.step == "filesystem"] == [3]

    await ex.start(START)
    log.clear()
    fakes["filesystem"].stop_failures = 10
    rec = await ex.stop(StopRequest(token=None))
    assert rec.outcome == "stop_failed"
    assert rec.held == ("drbd", "filesystem")  # the node stays active with these
    assert log == [("stop", "vms"), ("stop", "ip")] + [("stop", "filesystem")] * 3
    assert drbd.current == "Primary"
    assert isinstance(facts[-1], RunRecord) and facts[-1].outcome == "stop_failed"
    assert [(f.resource, f.action) for f in facts if isinstance(f, ResourceFailure)] == [("filesystem", "stop")]


async def test_stale_gate_stops_a_gated_stop_where_it_is() -> None:
    log: list[tuple[str, str]] = []
    gate = Gate()
    ex, _, _ = _group(log, gate=gate)
    await ex.start(START)
    log.clear()
    gate.stale_after = gate.checks + 2  # valid for vms and ip, then the grant is withdrawn
    rec = await ex.stop(StopRequest(token="grant-3", mode="save",
                                    image=ImageToken("handover", "grant-3", "4:node1", "AB12")))
    assert log == [("stop", "vms"), ("stop", "ip")]
    assert rec.outcome == "stale" and rec.held == ("drbd", "filesystem")


async def test_forcestop_stops_only_down_to_the_vms() -> None:
    log: list[tuple[str, str]] = []
    ex, _, _ = _group(log)
    await ex.start(START)
    log.clear()
    rec = await ex.stop(StopRequest(token=None, until="vms"))
    assert log == [("stop", "vms")] and rec.held == ("drbd", "filesystem", "ip")
    with pytest.raises(ValueError, match="unknown step"):
        await ex.stop(StopRequest(token=None, until="nfs"))


async def test_stop_after_a_partial_start() -> None:
    """The daemon stopped half-way through a start (cancelled): nothing is undone then, and
    a later stop brings every step down, each finding its own state."""
    log: list[tuple[str, str]] = []
    ex, drbd, fakes = _group(log)
    release = asyncio.Event()
    fakes["ip"].block_start = release
    task = asyncio.create_task(ex.start(START))
    await until(lambda: ex.in_flight is not None and ex.in_flight.current == "ip", 5, "the start to reach ip")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    rec = ex.history[-1]
    assert rec.outcome == "cancelled" and rec.held == ("drbd", "filesystem", "ip")
    assert drbd.current == "Primary" and fakes["filesystem"].started and not fakes["vms"].started
    log.clear()
    rec = await ex.stop(StopRequest(token=None))
    assert rec.outcome == "succeeded"
    assert log == [("stop", "vms"), ("stop", "ip"), ("stop", "filesystem"), ("demote", "drbd")]
    assert drbd.current == "Secondary" and not fakes["filesystem"].started


async def test_operator_command_waits_for_the_sequence_in_flight() -> None:
    log: list[tuple[str, str]] = []
    order: list[str] = []

    def on_fact(fact: object) -> None:
        if isinstance(fact, RunRecord) and fact.finished:
            order.append(f"sequence {fact.outcome}")  # published while the sequence still holds the lock

    drbd = SimDrbd(log)
    vms = FakeStep("vms", log, block_start=asyncio.Event())
    ex = GroupExecutor([DrbdStep(drbd, 5), vms], Gate(), on_fact=on_fact)
    seq = asyncio.create_task(ex.start(START))
    await until(lambda: ex.in_flight is not None and ex.in_flight.current == "vms", 5, "the start to reach vms")

    async def operator() -> None:
        async with ex.exclusive():
            order.append("operator ran")

    op = asyncio.create_task(operator())
    await asyncio.sleep(0.05)
    assert order == [] and ex.busy
    assert vms.block_start is not None
    vms.block_start.set()
    await asyncio.gather(seq, op)
    assert order == ["sequence succeeded", "operator ran"]


async def test_per_phase_timings_are_recorded() -> None:
    log: list[tuple[str, str]] = []
    clock = FakeClock()
    facts: list[object] = []
    ex, _, fakes = _group(log, clock=clock, facts=facts)
    fakes["filesystem"].start_cost = 1.5
    fakes["ip"].start_cost = 0.25
    fakes["vms"].start_cost = 4.0
    rec = await ex.start(START)
    assert [(p.step, p.started, p.seconds) for p in rec.phases] == [
        ("drbd", 0.0, 0.0), ("filesystem", 0.0, 1.5), ("ip", 1.5, 0.25), ("vms", 1.75, 4.0)]
    assert rec.seconds == 5.75
    assert rec.phase_seconds() == {"start:drbd": 0.0, "start:filesystem": 1.5, "start:ip": 0.25, "start:vms": 4.0}
    # Progress was published while running, then the final record.
    running = [f for f in facts if isinstance(f, RunRecord) and f.outcome == "running"]
    assert {f.current for f in running} >= {"drbd", "filesystem", "ip", "vms"}
    assert ex.history == (rec,) and ex.in_flight is None
    assert rec.to_json()["phases"][3]["step"] == "vms"


async def test_a_step_whose_budget_raises_is_not_run_and_the_rest_is_undone() -> None:
    log: list[tuple[str, str]] = []
    ex, _, fakes = _group(log)

    def broken() -> float:
        raise ZeroDivisionError("vms.parallel is 0")

    fakes["ip"].start_budget = broken  # type: ignore[method-assign]
    rec = await ex.start(START)
    assert rec.outcome == "rolled_back" and "internal error" in (rec.error or "")
    assert ("start", "ip") not in log and ("stop", "ip") not in log
    assert log[-2:] == [("stop", "filesystem"), ("demote", "drbd")] and ex.in_flight is None


async def test_a_stop_step_whose_budget_raises_fails_the_stop_and_ends_its_record() -> None:
    """Regression (red team): the failure text re-asked the step for its budget, so a budget that
    raised escaped the stop: no outcome, the run left "in flight" for good, the exception thrown at
    the caller instead of a stop_failed record."""
    log: list[tuple[str, str]] = []
    ex, drbd, fakes = _group(log)
    await ex.start(START)

    def broken() -> float:
        raise ZeroDivisionError("vms.parallel is 0")

    fakes["ip"].stop_budget = broken  # type: ignore[method-assign]
    rec = await ex.stop(StopRequest(token=None))
    assert rec.outcome == "stop_failed" and "internal error" in (rec.error or "")
    assert rec.held == ("drbd", "filesystem", "ip") and ex.in_flight is None
    assert drbd.current == "Primary"
