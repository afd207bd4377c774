"""Fixtures for the fencing tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from .emulators import BmcProcess, bmc


@pytest.fixture
def bmc_factory(tmp_path: Path):  # type: ignore[no-untyped-def]
    """Start BMC emulators on demand; every one is stopped by PID at the end."""
    started: list[BmcProcess] = []

    def start(mode: str = "immediate", **kw: object) -> BmcProcess:
        p = BmcProcess(tmp_path / f"bmc{len(started)}", mode=mode, **kw)  # type: ignore[arg-type]
        started.append(p)
        return p

    yield start
    for p in started:
        p.stop()


__all__ = ["bmc"]
