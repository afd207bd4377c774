"""The decision loop of DESIGN section 3: observe, decide, persist, log, act.

Each cycle: one snapshot of the world (no I/O), ``Facts`` by the pure
mapping, ``policy.step``, the new ``Durable`` persisted (fsynced, off the
loop) *before* any action if it changed, one journal entry when the reason
code changed, then the actions (tracked tasks). A cycle runs on every change
of the world and at least every ``policy.tick``; a ``WaitUntil`` brings the
next one forward.

Invariants:
- Loop lag is measured on every timer wake-up; a gap between cycles longer
  than ``tick + policy.stall_threshold`` (SIGSTOP, swap, a long pause) is a
  stall: the heartbeat receivers are drained (a few loop iterations) and the
  next cycle has ``facts.stalled`` (the policy then re-observes for a full
  heartbeat timeout before any fence or promotion).
- ``WATCHDOG=1`` only after a cycle that started on time and finished within
  ``stall_threshold``; ``STATUS=`` carries the current verdict sentence.
- A bug in a cycle is logged with its traceback and the loop carries on
  (the next cycle decides afresh from facts); nothing was carried out for
  the cycle that failed.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections.abc import Callable
from typing import Protocol

from clever_cluster import policy as P

from . import logsetup
from .decisionlog import action_names, log_decision
from .executor import Executor
from .history import DecisionEntry, History
from .mapping import Snapshot, build_facts
from .notify import Notifier
from .resources.threads import STATE, run_in
from .statefiles import DurableStore

log = logsetup.get("daemon.loop")

DRAIN_ITERATIONS = 20


class Host(Protocol):
    """The runtime, as the loop sees it."""

    @property
    def settings(self) -> P.Settings: ...

    @property
    def tick(self) -> float: ...

    def snapshot(self, *, stalled: bool = False, draw: float = 0.0) -> Snapshot: ...

    def after_cycle(self, decision: P.Decision, facts: P.Facts) -> None: ...


class DecisionLoop:
    def __init__(self, host: Host, state: P.PolicyState, store: DurableStore, executor: Executor, history: History,
                 notifier: Notifier, changed: asyncio.Event, peer: str, *, clock: Callable[[], float] = time.monotonic,
                 on_lag: Callable[[float], None] | None = None) -> None:
        self.host = host
        self.state = state
        self.store = store
        self.executor = executor
        self.history = history
        self.notifier = notifier
        self.changed = changed
        self.peer = peer
        self.clock = clock
        self.on_lag = on_lag or (lambda seconds: None)  # every timer wake-up's lateness (metrics histogram)
        self.decision: P.Decision | None = None
        self.facts: P.Facts | None = None
        self.decided_at: float | None = None  # wall clock of the current decision's first cycle
        self.wake_at = math.inf
        self.loop_lag = 0.0
        self.max_lag = 0.0
        self.last_cycle_seconds = 0.0
        self.stalls = 0
        self.cycles = 0
        self.errors = 0
        self._logged: str | None = None

    @property
    def verdict(self) -> str:
        d = self.decision
        return "starting: observing" if d is None else f"{d.phase.value}: {d.reason.sentence}"

    async def run(self) -> None:
        last = self.clock()
        stalled = False
        while True:
            now = self.clock()
            tick = self.host.tick
            deadline = min((math.floor(now / tick) + 1) * tick, max(now, self.wake_at))
            woke_by_timer = False
            try:
                async with asyncio.timeout(max(0.0, deadline - now)):
                    await self.changed.wait()
            except TimeoutError:
                woke_by_timer = True
            self.changed.clear()
            start = self.clock()
            self.loop_lag = max(0.0, start - deadline) if woke_by_timer else 0.0
            self.max_lag = max(self.max_lag, self.loop_lag)
            if woke_by_timer:
                self.on_lag(self.loop_lag)
            threshold = self.host.settings.stall_threshold
            if start - last > tick + threshold:
                self.stalls += 1
                stalled = True
                log.warning("event loop stalled: %.3f s between decisions (threshold %.3f s); draining the receivers and "
                            "re-observing before any fence or promotion", start - last, threshold,
                            extra={"fields": {"CLEVER_REASON": "loop_stall"}})
                for _ in range(DRAIN_ITERATIONS):
                    await asyncio.sleep(0)
                start = self.clock()
            ok = await self.cycle(stalled)
            stalled = False
            end = self.clock()
            last = start
            self.last_cycle_seconds = end - start
            self.notifier.cycle_done(end, self.verdict, in_time=ok and self.loop_lag <= threshold and end - start <= threshold)

    async def cycle(self, stalled: bool = False) -> bool:
        """One decision; returns False when it failed (logged) and nothing was carried out."""
        try:
            snap = self.host.snapshot(stalled=stalled, draw=random.random())
            facts = build_facts(snap)
            decision = P.step(self.state, facts, self.host.settings)
            if decision.state.durable != self.state.durable:
                await run_in(STATE, self.store.save, decision.state.durable)
        except Exception:  # a bug or an unwritable state file: decide again next cycle, act on nothing now
            self.errors += 1
            log.exception("decision cycle failed; nothing carried out")
            return False
        self.cycles += 1
        self.state, self.facts = decision.state, facts
        code = decision.reason.code.value
        if code != self._logged:
            self._logged = code
            self.decided_at = snap.wall
            log_decision(decision, self.peer)
            self.history.decision(DecisionEntry(snap.now, snap.wall, code, decision.phase.value, decision.reason.sentence,
                                                action_names(decision.actions), str(decision.state.durable.epoch)))
        self.decision = decision
        wake = self.executor.carry_out(decision, facts)
        self.wake_at = wake if wake is not None else math.inf
        self.host.after_cycle(decision, facts)
        return True
