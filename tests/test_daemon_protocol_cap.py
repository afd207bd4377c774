"""The daemon's protocol cap (CLEVER_CLUSTERD_MAX_PROTOCOL): parsed strictly, refused with the reason, never a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from clever_cluster.daemon.heartbeat import MIN_VERSION, PROTOCOL_VERSION
from clever_cluster.daemon.main import MAX_PROTOCOL_ENV, max_protocol


def test_unset_or_empty_means_this_build() -> None:
    assert max_protocol({}) == PROTOCOL_VERSION
    assert max_protocol({MAX_PROTOCOL_ENV: " "}) == PROTOCOL_VERSION


def test_each_readable_version_is_accepted() -> None:
    for v in range(MIN_VERSION, PROTOCOL_VERSION + 1):
        assert max_protocol({MAX_PROTOCOL_ENV: str(v)}) == v


@pytest.mark.parametrize("raw", ["0", str(PROTOCOL_VERSION + 1), "-1", "v1", "1.0"])
def test_out_of_range_or_garbled_is_refused(raw: str) -> None:
    with pytest.raises(ValueError, match=MAX_PROTOCOL_ENV):
        max_protocol({MAX_PROTOCOL_ENV: raw})


def test_the_daemon_refuses_to_start_with_a_bad_cap(tmp_path: Path) -> None:
    r = subprocess.run([sys.executable, "-m", "clever_cluster.daemon.main", "--config", str(tmp_path / "none.toml")],
                       env={**os.environ, MAX_PROTOCOL_ENV: "9"}, capture_output=True, text=True, timeout=60, check=False)
    assert r.returncode == 2 and f"{MAX_PROTOCOL_ENV}='9'" in r.stderr and "Traceback" not in r.stderr
