"""Shared fixtures. Helpers that the demo and benchmarks also use live in
``clever_cluster.sim`` (harness, configgen), not here."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from clever_cluster.sim import configgen

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared"


@pytest.fixture
def lab_configs(tmp_path: Path) -> tuple[Path, Path]:
    """node1.toml and node2.toml for a loopback lab, with a fresh key."""
    return configgen.write_pair(tmp_path / "lab")


def require_root() -> None:
    if os.geteuid() != 0:
        pytest.fail("this test needs root (CI runs as root)")
