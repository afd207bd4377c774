"""Scenario folders (tests/scenarios/<name>/): the command list runs on the
simulated cluster with the default timings; the decision log must equal
``expected.log`` line by line, every ``expect`` in the commands must hold,
and the oracle must see no violation.

After a deliberate change of behaviour, regenerate the logs with
``UPDATE_SCENARIOS=1 pytest tests/policy/test_policy_scenarios.py`` and
read the diff before committing it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from clever_cluster.sim.cluster.scenario import run_folder

FOLDER = Path(__file__).resolve().parents[1] / "scenarios"
NAMES = sorted(p.name for p in FOLDER.iterdir() if (p / "commands").exists())


@pytest.mark.parametrize("name", NAMES)
def test_scenario(name: str) -> None:
    r = run_folder(FOLDER / name)
    expected = FOLDER / name / "expected.log"
    if os.environ.get("UPDATE_SCENARIOS") == "1":
        expected.write_text("\n".join(r.log) + "\n")
    assert r.failures == []
    want = expected.read_text().splitlines()
    for i, (got, exp) in enumerate(zip(r.log, want, strict=False)):
        assert got == exp, f"{name}: line {i + 1} differs\n  expected: {exp}\n  got:      {got}"
    assert len(r.log) == len(want), f"{name}: {len(r.log)} log lines, expected {len(want)}"


def test_the_issue_scenarios_are_all_here() -> None:
    assert len(NAMES) >= 37
