"""The console's unit passes systemd-analyze verify with nothing on stderr, and keeps it harmless to the daemon."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
UNIT = REPO / "systemd" / "clever-cluster-console.service"


def _values() -> dict[str, list[str]]:
    values: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        if "=" in line and not line.lstrip().startswith(("#", ";", "[")):
            k, v = line.split("=", 1)
            values.setdefault(k.strip(), []).append(v.strip())
    return values


def test_unit_properties() -> None:
    v = _values()
    assert v["Type"] == ["notify"] and v["Restart"] == ["on-failure"]
    assert v["ExecStart"][0].startswith("/usr/bin/clever-cluster-console ")
    assert v["CapabilityBoundingSet"] == [""] and v["NoNewPrivileges"] == ["yes"] and v["ProtectSystem"] == ["strict"]
    assert int(v["OOMScoreAdjust"][0]) > 0  # the daemon's is -900: the console goes first
    assert "KillMode" not in v  # nothing of the daemon's runs in this unit


def test_systemd_analyze_verify(tmp_path: Path) -> None:
    assert shutil.which("systemd-analyze"), "systemd-analyze comes with the systemd package (scripts/apt-packages.txt)"
    exe = Path(os.environ.get("VIRTUAL_ENV", REPO / ".venv")) / "bin" / "clever-cluster-console"
    if not exe.exists():
        exe = REPO / ".venv" / "bin" / "clever-cluster-console"
    unit = tmp_path / "clever-cluster-console.service"
    unit.write_text(UNIT.read_text().replace("/usr/bin/clever-cluster-console", str(exe)))
    r = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stderr
    assert r.stderr == "", r.stderr
