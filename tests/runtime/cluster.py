"""Helpers for the tests of the wired daemon on the two-node lab (``sim.nodelab``).

The timings (``OVERRIDES``: the daemon's defaults with short fence delays
and gateway dampening) and the waits shared with the demo live in
``sim/nodelab/drive.py``; the test-only helpers are here. Everything is
asserted through ``clevervm`` (status/why/history JSON), the journal capture
and the transition log.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from clever_cluster.sim.harness import wait_for
from clever_cluster.sim.nodelab.drive import (
    MANAGED,
    OVERRIDES,
    cli_json,
    code,
    holds_all,
    other,
    phase,
    wait_active,
    wait_code,
)
from clever_cluster.sim.nodelab.lab import NodeLab
from clever_cluster.sim.nodelab.node import LabNode

__all__ = ["MANAGED", "OVERRIDES", "after_decisions", "cli_json", "code", "cycles", "holds_all", "journal", "other", "phase",
           "role_transitions", "vm_transitions", "wait_active", "wait_code"]


def cycles(n: LabNode) -> int:
    return int(n.status()["daemon"]["loop"]["cycles"])


def after_decisions(n: LabNode, count: int, timeout: float = 30.0) -> None:
    """Wait until the daemon of ``n`` made ``count`` more decisions (a number of cycles, not a time)."""
    start = cycles(n)
    wait_for(lambda: cycles(n) >= start + count, timeout, f"{count} decisions on {n.name}", interval=0.1)


def vm_transitions(lab: NodeLab, node: str, since: float) -> list[tuple[str, Any]]:
    return [(str(r.get("domain")), r.value) for r in lab.records() if r.node == node and r.kind == "vm" and r.t > since
            and r.get("domain") in MANAGED]


def role_transitions(lab: NodeLab, node: str, since: float) -> list[Any]:
    return [r.value for r in lab.records() if r.node == node and r.kind == "role" and r.t > since]


def journal(n: LabNode, pred: Callable[[dict[str, str]], bool]) -> list[dict[str, str]]:
    return [e for e in n.journal_entries() if pred(e)]
