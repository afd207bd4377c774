"""Helpers for the tests of the wired daemon on the two-node lab (``sim.nodelab``).

The lab's defaults are the daemon's, except the fence delays (short, so a
failover scenario takes seconds) and the gateway dampening (a score counts
after 1 s). Everything is asserted through ``clevervm`` (status/why/history
JSON), the journal capture and the transition log.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from clever_cluster.sim.harness import wait_for
from clever_cluster.sim.nodelab.lab import NodeLab
from clever_cluster.sim.nodelab.node import LabNode

OVERRIDES: dict[str, dict[str, Any]] = {
    "fencing": {"priority_delay": "3s", "random_delay": "0.5s"},
    "gateway": {"dampen": "1s"},
}
MANAGED = ("plc1", "plc2")


def holds_all(lab: NodeLab, node: str) -> bool:
    """``node`` holds DRBD Primary, the mount and both managed VMs (from the transition log), the other nothing."""
    act = lab.active()
    mine = act[node]
    others = [v for k, v in act.items() if k != node]
    full = "role r0" in mine and any(x.startswith("mount") for x in mine) and all(f"vm {vm}" in mine for vm in MANAGED)
    return full and all(not v for v in others)


def wait_active(lab: NodeLab, timeout: float = 60.0) -> LabNode:
    """Wait until exactly one node holds everything (and its daemon says PRIMARY); return it."""
    def one() -> LabNode | None:
        for n in lab.nodes:
            if n.power == "on" and holds_all(lab, n.name) and phase(n) == "PRIMARY":
                return n
        return None

    found = wait_for(one, timeout, "exactly one node active with every resource", interval=0.1)
    assert found is not None
    return found


def phase(n: LabNode) -> str | None:
    try:
        return str(n.status()["phase"])
    except Exception:  # noqa: BLE001 - not answering (yet): no phase
        return None


def code(n: LabNode) -> str | None:
    try:
        d = n.status()["decision"]
    except Exception:  # noqa: BLE001
        return None
    return None if d is None else str(d["code"])


def wait_code(n: LabNode, codes: set[str] | str, timeout: float = 30.0) -> dict[str, Any]:
    want = {codes} if isinstance(codes, str) else codes

    def got() -> dict[str, Any] | None:
        try:
            st = n.status()
        except Exception:  # noqa: BLE001
            return None
        return st if st["decision"] is not None and st["decision"]["code"] in want else None

    st = wait_for(got, timeout, f"{n.name} to decide {sorted(want)}", interval=0.1)
    assert st is not None
    return st


def cli_json(n: LabNode, *args: str, ok: bool = True) -> Any:
    r = n.cli(*args, "--json", timeout=120)
    if ok:
        assert r.returncode == 0, f"clevervm {' '.join(args)} exited {r.returncode}: {r.stderr}"
    return json.loads(r.stdout) if r.stdout.strip() else None


def other(lab: NodeLab, n: LabNode) -> LabNode:
    return lab.node(3 - n.index)


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
