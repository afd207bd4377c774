"""The resource group executor: ordered start with rollback, reverse stop with retries.

Start runs the steps in order (DRBD Primary -> mount -> IP -> VMs); stop runs
them in reverse. One sequence runs at a time: a second request, and every
operator command that goes through :meth:`GroupExecutor.exclusive`, waits
until the sequence in flight has finished or rolled back.

Invariants:
- No start step runs unless the gate token was re-validated immediately
  before it (no ``await`` in between). A token that went stale, or a gate
  check that raised, stops the sequence: nothing after it runs.
- A start that fails (error, deadline, stale gate) undoes, in reverse, every
  step that ran, including the failing one (whose stop is idempotent and
  undoes whatever part of it happened). A step that never ran is not touched.
- Rollback and stop never need a valid gate to make this node hold *less*;
  a gated stop whose token goes stale stops where it is (the policy decides
  again from fresh facts).
- A stop step that fails after ``stop_attempts`` tries ends the sequence:
  the steps below it are not stopped (DRBD cannot be demoted under a
  mounted filesystem), and the record's ``held`` names what is still held.
- A cancelled sequence (daemon shutdown) is not undone: resources stay as
  they are, to be observed afresh (VMs must survive a daemon restart).
- Every run, finished or not, produces a :class:`RunRecord` with per-phase
  timings; failures counted against resources are :class:`ResourceFailure`.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import enum
import time
from collections.abc import AsyncIterator, Callable, Hashable, Sequence

from .. import logsetup
from .base import GateCheck, GateStale, ResourceError, StartRequest, Step, StopRequest
from .facts import GroupFact, PhaseAction, PhaseOutcome, PhaseTiming, ResourceFailure, RunKind, RunOutcome, RunRecord

log = logsetup.get("daemon.resources.group")

ROLLBACK = StopRequest(token=None, mode="shutdown")


class _Result(enum.Enum):
    OK = "ok"
    FAILED = "failed"
    STALE = "stale"


class _Run:
    """The mutable state of one sequence; publishes a frozen RunRecord after each change."""

    def __init__(self, ex: GroupExecutor, kind: RunKind, token: Hashable | None) -> None:
        ex._next_id += 1
        self.ex = ex
        self.record = RunRecord(run_id=ex._next_id, kind=kind, token=repr(token),
                                started_mono=ex._clock(), started_wall=ex._wall())
        ex._in_flight = self.record
        ex._emit(self.record)

    def update(self, **changes: object) -> None:
        self.record = _replace(self.record, **changes)
        self.ex._in_flight = self.record
        self.ex._emit(self.record)

    def phase(self, step: str, action: PhaseAction, t0: float, outcome: PhaseOutcome, detail: str, attempts: int = 1) -> None:
        now = self.ex._clock()
        p = PhaseTiming(step=step, action=action, started=t0 - self.record.started_mono, seconds=now - t0,
                        outcome=outcome, attempts=attempts, detail=detail)
        self.update(phases=(*self.record.phases, p), current=None)

    def finish(self, outcome: RunOutcome, held: Sequence[str], error: str | None = None) -> RunRecord:
        self.update(outcome=outcome, held=tuple(held), error=error, current=None,
                    seconds=self.ex._clock() - self.record.started_mono)
        self.ex._in_flight = None
        self.ex._history.append(self.record)
        return self.record


def _replace(rec: RunRecord, **changes: object) -> RunRecord:
    return dataclasses.replace(rec, **changes)  # type: ignore[arg-type]


class _Ctx:
    """The StepContext given to one step of one run."""

    def __init__(self, ex: GroupExecutor, run: _Run, token: Hashable | None,
                 start: StartRequest | None, stop: StopRequest | None, action: PhaseAction) -> None:
        self._ex, self._run, self._token = ex, run, token
        self._start, self._stop, self._action = start, stop, action
        self.notes: list[str] = []

    @property
    def run_id(self) -> int:
        return self._run.record.run_id

    @property
    def start(self) -> StartRequest | None:
        return self._start

    @property
    def stop(self) -> StopRequest | None:
        return self._stop

    def check_gate(self) -> None:
        if self._token is None:
            return
        reason = self._ex._validate(self._token)
        if reason is not None:
            raise GateStale(reason)

    def note(self, text: str) -> None:
        self.notes.append(text)

    def fail(self, resource: str, reason: str, vm: str | None = None) -> None:
        self._ex._record_failure(self._run, resource, vm, "stop" if self._action != "start" else "start", reason)

    def detail(self, error: str | None = None) -> str:
        return "; ".join([*self.notes, *([error] if error else [])])


class GroupExecutor:
    """Runs start and stop sequences over ``steps`` (in start order)."""

    def __init__(self, steps: Sequence[Step], gate: GateCheck, *,
                 on_fact: Callable[[GroupFact], None] | None = None,
                 clock: Callable[[], float] = time.monotonic, wall: Callable[[], float] = time.time,
                 history: int = 32, retry_delay: float = 0.5) -> None:
        names = [s.name for s in steps]
        if len(set(names)) != len(names):
            raise ValueError(f"step names must be unique: {names}")
        self._steps = tuple(steps)
        self._gate = gate
        self._on_fact = on_fact
        self._clock, self._wall = clock, wall
        self._retry_delay = retry_delay
        self._lock = asyncio.Lock()
        self._next_id = 0
        self._in_flight: RunRecord | None = None
        self._history: collections.deque[RunRecord] = collections.deque(maxlen=history)
        self._failures: collections.deque[ResourceFailure] = collections.deque(maxlen=256)

    # ------------------------------------------------------------------ observing

    @property
    def step_names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self._steps)

    @property
    def busy(self) -> bool:
        return self._lock.locked()

    @property
    def in_flight(self) -> RunRecord | None:
        return self._in_flight

    @property
    def history(self) -> tuple[RunRecord, ...]:
        return tuple(self._history)

    @property
    def failures(self) -> tuple[ResourceFailure, ...]:
        return tuple(self._failures)

    @contextlib.asynccontextmanager
    async def exclusive(self) -> AsyncIterator[None]:
        """Hold off sequences while an operator command runs; waits for the one in flight."""
        async with self._lock:
            yield

    # ------------------------------------------------------------------ start

    async def start(self, req: StartRequest) -> RunRecord:
        async with self._lock:
            run = _Run(self, "start", req.token)
            log.info("start sequence %d (%s) begins", run.record.run_id, req.takeover,
                     extra={"fields": {"CLEVER_ACTION": "start"}})
            held: list[str] = []  # steps that ran (fully or in part) and are not undone
            try:
                outcome, error = await self._start_steps(run, req, held)
                if outcome == "succeeded":
                    rec = run.finish("succeeded", held)
                    log.info("start sequence %d succeeded in %.2f s (%s)", rec.run_id, rec.seconds or 0.0, _timings(rec),
                             extra={"fields": {"CLEVER_ACTION": "start"}})
                    return rec
                rb_error = await self._rollback(run, held)
            except asyncio.CancelledError:
                rec = run.finish("cancelled", held, "cancelled (daemon shutting down); nothing undone")
                log.warning("start sequence %d cancelled; left as they are: %s", rec.run_id, ", ".join(held) or "nothing")
                raise
            if held:
                outcome, error = "rollback_failed", f"{error}; rollback failed: {rb_error}"
            rec = run.finish(outcome, held, error)
            log.error("start sequence %d %s: %s (%s)", rec.run_id, outcome.replace("_", " "), error, _timings(rec),
                      extra={"fields": {"CLEVER_ACTION": "start", "CLEVER_REASON": f"start_{outcome}"}})
            return rec

    async def _start_steps(self, run: _Run, req: StartRequest, held: list[str]) -> tuple[RunOutcome, str | None]:
        for step in self._steps:
            ctx = _Ctx(self, run, req.token, req, None, "start")
            t0 = self._clock()
            run.update(current=step.name)  # publishes a fact: done before the check, not between it and the step
            try:
                budget = step.start_budget()
            except Exception as e:  # noqa: BLE001 - a bug in a step: it is not run, the others are undone
                msg = self._failure_text(step.name, "start", 0.0, e)
                run.phase(step.name, "start", t0, "failed", msg, attempts=0)
                return "rolled_back", msg
            # The check and the step's first instructions run without yielding to the loop.
            reason = self._validate(req.token)
            if reason is not None:
                run.phase(step.name, "start", t0, "stale", reason, attempts=0)
                return "stale", f"{step.name} not started: {reason}"
            held.append(step.name)
            try:
                async with asyncio.timeout(budget):
                    await step.start(ctx)
            except GateStale as e:
                run.phase(step.name, "start", t0, "stale", ctx.detail(str(e)))
                return "stale", f"{step.name} stopped half-way: {e}"
            except Exception as e:  # noqa: BLE001 - every failure is rolled back
                msg = self._failure_text(step.name, "start", budget, e)
                run.phase(step.name, "start", t0, "failed", ctx.detail(msg))
                self._record_failure(run, step.name, None, "start", msg)
                return "rolled_back", msg
            run.phase(step.name, "start", t0, "ok", ctx.detail())
        return "succeeded", None

    async def _rollback(self, run: _Run, held: list[str]) -> str | None:
        """Undo ``held`` in reverse; returns the error that stopped it (``held`` keeps the rest)."""
        by_name = {s.name: s for s in self._steps}
        for name in reversed(list(held)):
            ctx = _Ctx(self, run, None, None, ROLLBACK, "rollback")
            result, msg = await self._stop_step(run, by_name[name], ctx, "rollback", None)
            if result is not _Result.OK:
                return msg
            held.remove(name)
        return None

    # ------------------------------------------------------------------ stop

    async def stop(self, req: StopRequest) -> RunRecord:
        names = self.step_names
        if req.until is not None and req.until not in names:
            raise ValueError(f"unknown step {req.until!r}; steps are {', '.join(names)}")
        first = names.index(req.until) if req.until is not None else 0
        async with self._lock:
            run = _Run(self, "stop", req.token)
            log.info("stop sequence %d (%s%s) begins", run.record.run_id, req.mode,
                     f", down to {req.until}" if req.until else "", extra={"fields": {"CLEVER_ACTION": "stop"}})
            held = list(names)
            try:
                for step in reversed(self._steps[first:]):
                    ctx = _Ctx(self, run, req.token, None, req, "stop")
                    result, msg = await self._stop_step(run, step, ctx, "stop", req.token)
                    if result is _Result.STALE:
                        rec = run.finish("stale", held, f"{step.name} not stopped: {msg}")
                        log.warning("stop sequence %d stopped at %s: %s", rec.run_id, step.name, msg)
                        return rec
                    if result is _Result.FAILED:
                        self._record_failure(run, step.name, None, "stop", msg or "failed")
                        rec = run.finish("stop_failed", held, msg)
                        log.error("stop sequence %d failed at %s: %s; still holding %s", rec.run_id, step.name, msg,
                                  ", ".join(held), extra={"fields": {"CLEVER_ACTION": "stop", "CLEVER_REASON": "stop_failed"}})
                        return rec
                    held.remove(step.name)
            except asyncio.CancelledError:
                run.finish("cancelled", held, "cancelled (daemon shutting down)")
                raise
            rec = run.finish("succeeded", held)
            log.info("stop sequence %d succeeded in %.2f s (%s)", rec.run_id, rec.seconds or 0.0, _timings(rec),
                     extra={"fields": {"CLEVER_ACTION": "stop"}})
            return rec

    async def _stop_step(self, run: _Run, step: Step, ctx: _Ctx, action: PhaseAction,
                         token: Hashable | None) -> tuple[_Result, str | None]:
        t0 = self._clock()
        attempts = max(1, step.stop_attempts)
        msg: str | None = None
        for attempt in range(1, attempts + 1):
            run.update(current=step.name)
            if token is not None and (reason := self._validate(token)) is not None:
                run.phase(step.name, action, t0, "stale", ctx.detail(reason), attempts=attempt - 1)
                return _Result.STALE, reason
            budget = 0.0
            try:
                budget = step.stop_budget()
                async with asyncio.timeout(budget):
                    await step.stop(ctx)
            except GateStale as e:
                run.phase(step.name, action, t0, "stale", ctx.detail(str(e)), attempts=attempt)
                return _Result.STALE, str(e)
            except Exception as e:  # noqa: BLE001 - reported, retried
                msg = self._failure_text(step.name, "stop", budget, e)
                log.warning("%s of %s failed (attempt %d of %d): %s", action, step.name, attempt, attempts, msg)
                if attempt < attempts:
                    await asyncio.sleep(self._retry_delay)
                continue
            run.phase(step.name, action, t0, "ok", ctx.detail(), attempts=attempt)
            return _Result.OK, None
        run.phase(step.name, action, t0, "failed", ctx.detail(msg), attempts=attempts)
        return _Result.FAILED, msg

    # ------------------------------------------------------------------ helpers

    def _validate(self, token: Hashable) -> str | None:
        try:
            return self._gate(token)
        except Exception as e:
            log.exception("gate check raised")
            return f"gate check failed: {e!r}"

    @staticmethod
    def _failure_text(step: str, action: str, budget: float, e: BaseException) -> str:
        if isinstance(e, TimeoutError):
            return f"{action} of {step} did not finish within {budget:g} s"
        if isinstance(e, ResourceError):
            return str(e)
        log.error("%s of %s raised an unexpected error", action, step, exc_info=e)
        return f"{action} of {step} failed with an internal error: {e!r}"

    def _record_failure(self, run: _Run, resource: str, vm: str | None, action: str, reason: str) -> None:
        f = ResourceFailure(resource=resource, vm=vm, action="start" if action == "start" else "stop", reason=reason,
                            run_id=run.record.run_id, at_mono=self._clock(), at_wall=self._wall())
        self._failures.append(f)
        self._emit(f)

    def _emit(self, fact: GroupFact) -> None:
        if self._on_fact is None:
            return
        try:
            self._on_fact(fact)
        except Exception:
            log.exception("fact consumer raised")


def _timings(rec: RunRecord) -> str:
    return ", ".join(f"{p.action} {p.step} {p.seconds:.2f} s {p.outcome}" for p in rec.phases) or "no phases"
