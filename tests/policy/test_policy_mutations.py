"""Mutation checks: each seeded bug, switched on here, must make a search fail,
and the same search without it must pass. The bugs are injected through an
explicit ``Mutations`` value that production code never passes."""

from __future__ import annotations

from pathlib import Path

import pytest

from clever_cluster.policy import Mutations
from clever_cluster.sim.cluster import search

REPO = Path(__file__).resolve().parents[2]

DRBD_HANDLER = (("cut", ("bond0",)), ("crash", ("node1",)), ("power-off", ("node1",)), ("heal", ()))
LONE_DISKS = (("power-off", ("node1",)), ("power-off", ("node2",)), ("power-on", ("node1",)), ("power-on", ("node2",)),
              ("cut", ("bond0",)), ("heal", ()))
IMAGES = (("migrate", ("node1",)), ("reboot", ("node2",)), ("power-off", ("node2",)), ("vm-crash", ("node1", "vm1")),
          ("vm-crash", ("node2", "vm1")), ("unmigrate", ("node1",)), ("forcestop", ()), ("forcestart", ()))
DEVICES = (("device", ("node1", "1", "accept_only")), ("device", ("node2", "1", "accept_only")), ("cut", ("bond0",)),
           ("cut", ("lan",)), ("power-off", ("node1",)), ("power-off", ("node2",)), ("heal", ()), ("gateway-down", ("node1",)))


def _random(m: Mutations, seeds: int, alphabet: tuple[tuple[str, tuple[str, ...]], ...] = search.RANDOM_ALPHABET) -> list[str]:
    found = search.first_failures(range(seeds), search.RunConfig(mutations=m), alphabet=alphabet, limit=1)
    return found[0][2] if found else []


def _exhaustive(m: Mutations, depth: int, slot: float, alphabet: tuple[tuple[str, tuple[str, ...]], ...]) -> list[str]:
    for _, out in search.exhaustive(depth, slot=slot, alphabet=alphabet, cfg=search.RunConfig(heal_at=0.0, mutations=m)):
        return out.violations
    return []


SEARCHES = {
    "drop_s7": lambda m: _random(m, 300),
    "accepted_counts_as_off": lambda m: _random(m, 1500, DEVICES),
    "handler_exit3_unreachable": lambda m: _exhaustive(m, 4, 1.0, DRBD_HANDLER),
    "skip_priority_delay": lambda m: _random(m, 300),
    "restore_stale_image": lambda m: _random(m, 600, IMAGES),
    "promote_consistent": lambda m: _exhaustive(m, 5, 4.0, LONE_DISKS),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(SEARCHES))
def test_seeded_bug_is_caught(name: str) -> None:
    violations = SEARCHES[name](Mutations(**{name: True}))
    assert violations, f"mutation {name} was not caught"
    assert SEARCHES[name](Mutations()) == [], "the same search fails without the bug"


def test_every_mutation_has_a_search() -> None:
    assert set(SEARCHES) == set(Mutations.__dataclass_fields__)


def test_production_code_cannot_switch_a_mutation_on() -> None:
    for pkg in ("daemon", "fencing"):
        for path in (REPO / pkg).rglob("*.py"):
            text = path.read_text()
            assert "mutations" not in text.lower(), f"{path} refers to the test-only mutation hooks"
