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


@pytest.fixture(scope="session", autouse=True)
def _remove_stale_labs() -> None:
    """Namespaces left by a test process that died (killed CI job, crash)."""
    if os.geteuid() == 0:
        from clever_cluster.sim import netns

        netns.cleanup_stale()


@pytest.fixture
def netlab():
    """A network-namespace lab that is removed after the test, pass or fail."""
    require_root()
    from clever_cluster.sim import netns

    lab = netns.Lab()
    try:
        yield lab
    finally:
        lab.close()
