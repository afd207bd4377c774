"""Driving the wired daemons of a :class:`~.lab.NodeLab`: shortened timings and waits on what ``clevervm`` reports.

Shared by the demo (``sim/demo.py``) and the lab tests of the runtime
(``tests/runtime/``). The lab's defaults are the daemon's, except the fence
delays (short, so a failover scenario takes seconds) and the gateway
dampening (a score counts after 1 s): :data:`OVERRIDES`.

Invariants: every wait polls with a deadline (``sim.harness.wait_for``),
never a fixed sleep; "active" means both the transition log (what the node
really holds) and the daemon's own phase agree.
"""

from __future__ import annotations

import json
from typing import Any

from clever_cluster.sim.harness import wait_for

from .lab import NodeLab
from .node import LabNode

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
    """Wait until the daemon of ``n`` decides one of ``codes``; return its status document."""
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
    """``clevervm ARGS --json`` on ``n``, parsed; with ``ok`` a non-zero exit raises AssertionError with its stderr."""
    r = n.cli(*args, "--json", timeout=120)
    if ok and r.returncode != 0:
        raise AssertionError(f"clevervm {' '.join(args)} on {n.name} exited {r.returncode}: {r.stderr.strip()}")
    return json.loads(r.stdout) if r.stdout.strip() else None


def other(lab: NodeLab, n: LabNode) -> LabNode:
    return lab.node(3 - n.index)


def timeline(n: LabNode, kind: str, *, since: float = 0.0, done: bool = True, outcome: str | None = None) -> dict[str, Any] | None:
    """The newest timeline of ``kind`` in ``clevervm history`` on ``n`` started at or after wall time ``since``.

    With ``done``, only a finished one; with ``outcome``, only one that ended so.
    """
    hist = cli_json(n, "history")
    found = [t for t in hist["timelines"]
             if t["kind"] == kind and (t["done"] or not done) and (t["started_at"] or 0.0) >= since
             and (outcome is None or t["outcome"] == outcome)]
    return found[-1] if found else None


def wait_timeline(n: LabNode, kind: str, *, since: float = 0.0, outcome: str | None = None,
                  timeout: float = 60.0) -> dict[str, Any]:
    """Wait until ``n``'s history holds a finished timeline of ``kind`` started after ``since`` (ended with ``outcome``)."""
    def got() -> dict[str, Any] | None:
        try:
            return timeline(n, kind, since=since, outcome=outcome)
        except Exception:  # noqa: BLE001 - not answering (yet)
            return None

    t = wait_for(got, timeout, f"a {kind} timeline on {n.name} that ended {outcome or 'at all'}", interval=0.2)
    assert t is not None
    return t


def devices_verified(n: LabNode) -> bool:
    """Every fence device of ``n`` has passed its identity check (read ON while the peer was heard).

    A device can only be verified while its machine runs: a test that powers the peer off before its
    survivor verified the device tests "fencing refused, the operator confirms" instead of a failover.
    """
    try:
        devs = n.status()["fencing"]["devices"]
    except Exception:  # noqa: BLE001 - not answering: not verified
        return False
    return bool(devs) and all(d["identity"] == "verified" for d in devs)


def wait_devices_verified(n: LabNode, timeout: float = 60.0) -> None:
    wait_for(lambda: devices_verified(n), timeout, f"{n.name}'s fence devices verified", interval=0.2)
