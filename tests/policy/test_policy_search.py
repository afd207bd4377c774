"""The simulated cluster under fault schedules: random (10,000 seeds),
exhaustive (every sequence of 5 events of the issue's alphabet), routine
operations (never a fence). Any failure prints the seed and a minimal
replayable schedule.

Sizes are chosen for the time budget of `make test` on two cores (about
a minute each); bench/policy_search.py runs a million schedules."""

from __future__ import annotations

import random

import pytest

from clever_cluster.sim.cluster import search
from clever_cluster.sim.cluster.script import Command

RANDOM_SEEDS = 10_000
WORKERS = 2
# About a minute or two each on a quiet machine; the deadline leaves room for a loaded one
# (make test runs them next to the lab tests).
SEARCH_DEADLINE = 900


def _explain(found: list[tuple[int, list[Command], list[str]]], cfg: search.RunConfig | None = None) -> str:
    cfg = cfg or search.RunConfig()
    seed, sched, _ = found[0]
    return search.report(seed, sched, search.run(seed, sched, cfg), cfg)


@pytest.mark.slow
@pytest.mark.timeout(SEARCH_DEADLINE)
def test_random_fault_schedules() -> None:
    found = search.first_failures(range(RANDOM_SEEDS), workers=WORKERS)
    assert not found, _explain(found)


@pytest.mark.slow
@pytest.mark.timeout(SEARCH_DEADLINE)
def test_exhaustive_depth_5() -> None:
    bad, stats = search.exhaustive_parallel(5, workers=WORKERS)
    assert stats["leaves"] + stats["pruned"] >= len(search.EXHAUSTIVE_ALPHABET) ** 5 - len(search.EXHAUSTIVE_ALPHABET) ** 4
    if bad:
        sched, violations = bad[0]
        cfg = search.replayable(sched)
        small = search.shrink(0, sched, cfg)
        pytest.fail(f"{violations[0]}\nreplay: search.run(0, {small}, search.replayable({sched}))")


ROUTINE = (
    ("restart", ("node2",)), ("reboot", ("node1",)), ("reboot", ("node2",)),
    ("proto", ("node1", "6")), ("proto", ("node2", "6")), ("restart", ("node1",)),
    ("key", ("node1", "k1", "k2")), ("key", ("node2", "k2", "k1")), ("key", ("node1", "k2", "k1")),
)


@pytest.mark.slow
def test_routine_operations_never_fence() -> None:
    """Standby daemon restart, clean reboots, rolling upgrade by one version, key rotation: no fence, ever."""
    for seed in range(300):
        sched = search.random_schedule(random.Random(seed), events=5, alphabet=ROUTINE)
        out = search.run(seed, sched)
        assert out.ok, search.report(seed, sched, out)
        assert out.world.fence_count == 0, f"seed {seed}: a routine schedule fenced: {[str(c) for c in sched]}"


def test_a_violation_is_reported_with_seed_and_minimal_schedule() -> None:
    """The reporting path itself: a seeded bug gives a seed, a shrunk schedule that still fails, and the log."""
    from clever_cluster.policy import Mutations
    cfg = search.RunConfig(mutations=Mutations(skip_priority_delay=True))
    found = search.first_failures(range(200), cfg, limit=1)
    assert found
    seed, sched, _ = found[0]
    small = search.shrink(seed, sched, cfg)
    assert 0 < len(small) <= len(sched)
    assert not search.run(seed, small, cfg).ok
    text = search.report(seed, sched, search.run(seed, sched, cfg), cfg)
    assert text.startswith(f"seed {seed}: ")
    assert all(f"  {c}" in text.splitlines() for c in small)


SINGLE_FAULTS = {
    "active power loss": [("power-off", ("node1",))],
    "standby power loss": [("power-off", ("node2",))],
    "active daemon crash": [("crash", ("node1",))],
    "active daemon hang": [("hang", ("node1", "30"))],
    "all links cut": [("cut", ("bond0",)), ("cut", ("lan",))],
    "isolated active": [("gateway-down", ("node1",)), ("cut", ("bond0",)), ("cut", ("lan",))],
    "replication link cut": [("cut", ("bond0",))],
    "active gateway lost": [("gateway-down", ("node1",))],
}


@pytest.mark.parametrize("name", sorted(SINGLE_FAULTS))
def test_single_fault_service_back_within_the_bound(name: str) -> None:
    """Without healing the fault: the service runs again (here or after a fence) within the predicted bound."""
    w = search.new_world(0, search.RunConfig())
    w.run_until(15.0)
    assert w.service_up() == "node1"
    for verb, args in SINGLE_FAULTS[name]:
        search.apply(w, Command(w.t, verb, args))
    bound = search.predicted_bound()
    w.run_until(15.0 + bound)
    assert not w.oracle.violations, w.oracle.violations[0]
    assert w.service_up() is not None, f"{name}: no service {bound:g}s after the fault: {search.status_line(w)}"
