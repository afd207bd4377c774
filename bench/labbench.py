"""Shared parts of the benchmarks that run the two-node lab (``sim.nodelab``) with the real daemons.

Each benchmark script builds on these: a lab per configuration, reused for
every run of that configuration (the lab takes seconds to build; a failover
or handover run leaves it in a state the next run starts from), the
summaries (median, p95, min, max over the runs), the command and machine
that produced them, and ``--json PATH`` for the raw samples (the smoke tests
parse it).

Timing sources, all on the same host:
- the transition log (``time.monotonic()``, CLOCK_MONOTONIC is system-wide):
  the moment the harness injected a fault, and when a VM went active or a
  role changed (stamped by libvirt's keeper and the DRBD simulator);
- the daemon's ``clevervm history --json`` timelines: per-phase durations
  from the daemon's own monotonic clock, and each mark's wall-clock time;
- wall clock, to relate a mark of the daemon to the fault the harness
  injected (``time.time()`` read right before the fault: one clock, same
  host, no NTP step within a run of seconds).

Invariant: every lab is closed (and proven gone) even when a run fails; a run
that cannot finish raises, it is never counted as a sample.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from clever_cluster.sim.harness import wait_for
from clever_cluster.sim.nodelab.drive import MANAGED, cli_json, code, devices_verified, holds_all, other, wait_active, wait_code
from clever_cluster.sim.nodelab.lab import NodeLab, cleanup_stale
from clever_cluster.sim.nodelab.node import LabNode

REPO = Path(__file__).resolve().parent.parent

__all__ = ["MANAGED", "LabNode", "NodeLab", "cli_json", "code", "holds_all", "other", "wait_active", "wait_code", "wait_for"]


def percentile(xs: list[float], p: float) -> float:
    s = sorted(xs)
    k = (len(s) - 1) * p
    lo, hi = int(k), min(int(k) + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def summary(xs: list[float]) -> dict[str, float | int]:
    """Median, p95, min, max of the samples (seconds or whatever unit they are in)."""
    if not xs:
        return {"n": 0}
    return {"n": len(xs), "median": statistics.median(xs), "p95": percentile(xs, 0.95), "min": min(xs), "max": max(xs)}


def fmt(s: dict[str, float | int], unit: str = "s", digits: int = 3) -> str:
    if not s.get("n"):
        return "no samples"
    return (f"median {s['median']:.{digits}f} {unit} (p95 {s['p95']:.{digits}f}, min {s['min']:.{digits}f}, "
            f"max {s['max']:.{digits}f}; n={s['n']})")


def command() -> str:
    return shlex.join([".venv/bin/python", os.path.relpath(sys.argv[0], REPO), *sys.argv[1:]])


def machine() -> dict[str, Any]:
    """What the numbers were measured on, and how busy it was (load average now)."""
    uname = os.uname()
    return {"cpus": os.cpu_count(), "kernel": uname.release, "loadavg": list(os.getloadavg()), "time": time.strftime("%Y-%m-%d %H:%M:%S %Z")}


def setup(name: str) -> Path:
    """Refuse without root; make SIGTERM unwind (so the labs are removed); a work directory."""
    if os.geteuid() != 0:
        print(f"bench/{name}.py needs root (network namespaces, loop devices)", file=sys.stderr)
        sys.exit(2)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    cleanup_stale()
    return Path(tempfile.mkdtemp(prefix=f"cc-bench-{name}-"))


@contextmanager
def lab(work: Path, name: str, **options: Any) -> Iterator[NodeLab]:
    """A started lab whose logs are kept under ``work/name``; closed and checked for leftovers on the way out."""
    lb = NodeLab(work / name, **options)
    try:
        lb.start()
        yield lb
    finally:
        lb.close()
        lb.assert_nothing_left()


def steady(lb: NodeLab, timeout: float = 120.0) -> tuple[LabNode, LabNode]:
    """Wait until one node runs everything, the other is a connected, UpToDate standby; (active, standby).

    Also until both daemons' fence devices are verified (the device monitor's first check, a few
    seconds after a daemon starts): a power loss inside that first check's window, while the peer
    is still heard, makes the device read OFF "while the peer is heard" and be refused as not
    controlling the peer (seen in a run of bench/failover.py; docs/benchmarks.md). In production a
    node rarely dies seconds after its peer's daemon started; the benchmark measures the steady state.
    """
    active = wait_active(lb, timeout)
    standby = other(lb, active)
    wait_code(standby, "no_action_secondary", timeout)
    lb.wait_connected(timeout)
    wait_code(active, "no_action_primary", timeout)
    wait_for(lambda: devices_verified(active) and devices_verified(standby), timeout, "both fence devices verified", interval=0.2)
    return active, standby


def timeline(n: LabNode, kind: str, after_wall: float, timeout: float = 60.0) -> dict[str, Any]:
    """The newest finished ``kind`` timeline of ``n``'s history that started after ``after_wall``."""
    def done() -> dict[str, Any] | None:
        try:
            hist = cli_json(n, "history")
        except Exception:  # noqa: BLE001 - the daemon is busy or restarting: try again
            return None
        found = [t for t in hist["timelines"] if t["kind"] == kind and t["done"] and (t["started_at"] or 0) >= after_wall]
        return found[-1] if found else None

    t = wait_for(done, timeout, f"a finished {kind} timeline on {n.name}", interval=0.2)
    assert t is not None
    return t


def mark(t: dict[str, Any], name: str) -> dict[str, Any] | None:
    return next((m for m in t["marks"] if m["name"] == name), None)


def step_seconds(t: dict[str, Any], step: str, kind: str) -> float | None:
    """Seconds of one step (drbd, filesystem, ip, vms) of the timeline's last successful ``kind`` sequence."""
    seqs = [s for s in t["sequences"] if s["kind"] == kind and s["outcome"] == "succeeded"]
    if not seqs:
        return None
    return next((float(p["seconds"]) for p in seqs[-1]["steps"] if p["step"] == step), None)


def last_vm_active(lb: NodeLab, node: str, since: float) -> float | None:
    """Monotonic time at which the last managed VM went active on ``node`` after ``since`` (transition log)."""
    ts = {}
    for r in lb.records():
        if r.node == node and r.kind == "vm" and r.t > since and r.get("domain") in MANAGED and r.value == "active":
            ts.setdefault(r.get("domain"), r.t)
    return max(ts.values()) if len(ts) == len(MANAGED) else None


def write_json(path: str | None, results: dict[str, Any]) -> None:
    text = json.dumps(results, indent=1, default=str)
    if path:
        Path(path).write_text(text + "\n")
    print(text)
