"""The lab benchmarks run, one run each, and their results parse (so the scripts do not rot).

Each script runs as ``make test`` would find it (the repository's
interpreter, as root) with ``--runs 1`` and ``--json``; the assertions are on
the structure and the order of events the numbers come from (a failover's
detection comes before its total; the VMs were restored, not cold-booted, in
a handover), never on speed: the numbers themselves are the benchmarks'
business (docs/benchmarks.md).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import require_root

pytestmark = [pytest.mark.root, pytest.mark.slow]
REPO = Path(__file__).resolve().parents[2]


def run(script: str, tmp_path: Path, *args: str, timeout: float = 280) -> dict[str, Any]:
    require_root()
    out = tmp_path / "result.json"
    r = subprocess.run([sys.executable, str(REPO / "bench" / script), "--runs", "1", "--json", str(out), *args],
                       capture_output=True, text=True, timeout=timeout, cwd=REPO, check=False)
    assert r.returncode == 0, f"{script} exited {r.returncode}:\n{r.stderr[-4000:]}"
    assert f"command: .venv/bin/python bench/{script}" in r.stdout
    res: dict[str, Any] = json.loads(out.read_text())
    assert res["command"].split()[1] == f"bench/{script}"
    assert res["machine_before"]["cpus"] >= 1
    return res


def test_failover_measures_every_phase(tmp_path: Path) -> None:
    res = run("failover.py", tmp_path, "--configs", "zero")
    (s,) = res["configs"]["zero"]["samples"]
    assert s["from"] != s["to"]
    phases = ("detect", "delay", "fence", "gate", "promote", "mount", "ip", "vms")
    assert all(s[p] is not None and s[p] >= 0 for p in phases), s
    # The steps happen one after another inside the total: their sum cannot exceed it.
    assert sum(s[p] for p in phases) <= s["total"] + 0.05, s
    assert "confirmed off" in s["fence_detail"]
    assert res["detection"]["n"] == 1


def test_handover_measures_every_phase(tmp_path: Path) -> None:
    res = run("handover.py", tmp_path, "--no-qemu")
    (s,) = res["samples"]
    assert s["restored"] is True, s  # saved and restored, not cold-booted
    steps = ("save", "ip_down", "umount", "demote", "promote", "mount", "ip_up", "restore")
    assert all(s[p] is not None and s[p] >= 0 for p in steps), s
    assert s["decide"] > 0 and sum(s[p] for p in steps) <= s["total"] + 0.05, s
    assert res["baseline_libvirt_save_restore"]["n"] >= 3


def test_gateway_loss_decision(tmp_path: Path) -> None:
    res = run("gateway.py", tmp_path, "--dampen", "1s")
    (s,) = res["samples"]
    assert "gateway score" in s["decision_detail"] and "handing over" in s["decision_detail"]
    # The decision waits for the dampen; the resources move after it.
    assert s["decision"] >= 1.0 and s["resources_moved"] > s["decision"], s


def test_footprint_groups_the_stack(tmp_path: Path) -> None:
    res = run("footprint.py", tmp_path, "--window", "1")
    for role in ("active", "standby"):
        groups = res["summary"][role]
        assert {"daemon", "drbd simulator", "libvirtd", "baseline interpreter", "whole stack"} <= set(groups), groups
        assert groups["daemon"]["rss_mb"]["median"] > 0
        assert groups["whole stack"]["rss_mb"]["median"] > groups["daemon"]["rss_mb"]["median"]


def test_keepalived_side_by_side(tmp_path: Path) -> None:
    if shutil.which("keepalived") is None:
        pytest.fail("keepalived is not installed (scripts/apt-packages.txt)")
    res = run("keepalived.py", tmp_path, timeout=290)
    assert set(res["samples"]) == {"keepalived advert 1 s", "keepalived advert 0.1 s", "clever-cluster (fence delay 0)"}
    assert all(len(v) == 1 and v[0] > 0 for v in res["samples"].values())
    assert set(res["ratio_clever_to_keepalived"]) == {"keepalived advert 1 s", "keepalived advert 0.1 s"}
