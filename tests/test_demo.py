"""`make demo` runs the main job end to end and cleans up after itself."""

from __future__ import annotations

import subprocess
import sys


def test_demo_runs_and_stops_cleanly() -> None:
    r = subprocess.run([sys.executable, "-m", "clever_cluster.sim.demo"], capture_output=True, text=True, timeout=300, check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    out = r.stdout
    assert "Node node1: phase" in out and "Node node2: phase" in out
    assert "node1: exit code 0" in out and "node2: exit code 0" in out
    assert out.rstrip().endswith("demo finished")
