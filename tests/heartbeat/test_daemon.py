"""Real clever-clusterd processes on loopback: status, clean stop, announced restart."""

from __future__ import annotations

import json
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from clever_cluster.sim import configgen
from clever_cluster.sim.harness import DaemonProcess, run_cli, wait_for


def status(cfg: Path) -> dict[str, Any] | None:
    r = run_cli(cfg, "status", "--json")
    return json.loads(r.stdout) if r.returncode == 0 else None


def peer_state(cfg: Path) -> str | None:
    st = status(cfg)
    return st["heartbeat"]["state"] if st else None


@pytest.fixture
def daemons(tmp_path: Path) -> Iterator[tuple[Path, Path, DaemonProcess, DaemonProcess]]:
    c1, c2 = configgen.write_pair(tmp_path / "lab")
    d1, d2 = DaemonProcess(c1).start(), DaemonProcess(c2).start()
    try:
        yield c1, c2, d1, d2
    finally:
        d1.stop()
        d2.stop()


def test_status_shows_the_peer_its_links_and_the_intent(daemons: tuple[Path, Path, DaemonProcess, DaemonProcess]) -> None:
    c1, c2, d1, _d2 = daemons
    wait_for(lambda: peer_state(c1) == "alive" and peer_state(c2) == "alive", 20, "both daemons to hear each other")
    wait_for(lambda: all(ln["rtt_ms"] is not None for ln in status(c1)["heartbeat"]["links"]), 5, "RTT on both links")  # type: ignore[index]
    st = status(c1)
    assert st is not None
    hb = st["heartbeat"]
    assert hb["name"] == "node2" and hb["keys"]["peer_uses"] == "key_file"
    assert [ln["name"] for ln in hb["links"]] == ["lo1", "lo2"] and all(ln["up"] for ln in hb["links"])
    assert hb["settings"]["mismatch"] is False
    assert hb["self"]["machine_id"] != status(c2)["heartbeat"]["self"]["machine_id"]  # type: ignore[index]
    text = run_cli(c1, "status").stdout
    assert "Peer node2: alive   incarnation" in text
    assert "link lo1  up" in text and "link lo2  up" in text and "rtt" in text
    assert "Intent: version 0" in text
    assert "Traceback" not in d1.log()


def test_sigterm_before_drbd_was_observed_stops_without_leaving(daemons: tuple[Path, Path, DaemonProcess, DaemonProcess]) -> None:
    """These daemons have no DRBD to observe: their report cannot say what they hold, so a stop must
    not claim a clean leave ("nothing held" would keep the peer from ever taking over). The peer
    applies its loss rules. `leaving` -> left, never lost, with DRBD observed: tests/runtime/test_cluster.py
    (clean stop of the standby) and tests/e2e/test_scenarios_power.py (standby daemon restart)."""
    c1, _c2, _d1, d2 = daemons
    wait_for(lambda: peer_state(c1) == "alive", 20, "node1 to hear node2")
    d2.signal(signal.SIGTERM)
    assert d2.proc is not None and d2.proc.wait(10) == 0
    assert "stopping before DRBD was observed: no `leaving` announcement" in d2.log()
    assert "announced leaving" not in d2.log()
    wait_for(lambda: peer_state(c1) == "lost", 10, "node1 to lose node2")
    assert status(c1)["heartbeat"]["event_counts"].get("peer_lost", 0) == 1  # type: ignore[index]


def test_daemon_restart_announces_restarting_and_exits_for_systemd(daemons: tuple[Path, Path, DaemonProcess, DaemonProcess]) -> None:
    c1, c2, _d1, d2 = daemons
    wait_for(lambda: peer_state(c1) == "alive" and peer_state(c2) == "alive", 20, "both alive")
    r = run_cli(c2, "daemon-restart")
    assert r.returncode == 0, r.stderr
    assert "expects it back within 30s" in r.stdout
    assert d2.proc is not None and d2.proc.wait(10) == 75
    wait_for(lambda: peer_state(c1) == "restarting", 5, "node1 to expect node2 back")
    assert "restarting (expected back within" in run_cli(c1, "status").stdout
    d3 = DaemonProcess(c2).start()  # what systemd does on exit status 75
    try:
        wait_for(lambda: peer_state(c1) == "alive", 20, "node2 back")
        assert status(c1)["heartbeat"]["restarts"] == 1  # type: ignore[index]
    finally:
        d3.stop()


def test_an_unreadable_incarnation_file_stops_the_start_with_a_clear_error(tmp_path: Path) -> None:
    c1, _c2 = configgen.write_pair(tmp_path / "lab")
    state = tmp_path / "lab" / "node1" / "state"
    state.mkdir(parents=True)
    (state / "incarnation.json").write_text("{not json")
    d = DaemonProcess(c1).start()
    try:
        assert d.proc is not None and d.proc.wait(20) == 1
        log = d.log()
        assert "cannot start the heartbeat" in log and "incarnation must never go backwards" in log
        assert "Traceback" not in log
        assert (state / "incarnation.json").read_text() == "{not json"  # nothing lost
    finally:
        d.stop()


def test_links_listed_in_another_order_on_the_peer_work_and_are_pointed_out(tmp_path: Path) -> None:
    c1, c2 = configgen.write_pair(tmp_path / "lab")
    text = c2.read_text()
    blocks = text.split("[[heartbeat.link]]")
    # node2 lists lo2 before lo1.
    c2.write_text(blocks[0] + "[[heartbeat.link]]" + blocks[2].rstrip("\n") + "\n\n[[heartbeat.link]]" + blocks[1])
    assert run_cli(c2, "status").returncode == 3  # (not running yet) the file is still a valid configuration
    d1, d2 = DaemonProcess(c1).start(), DaemonProcess(c2).start()
    try:
        wait_for(lambda: peer_state(c1) == "alive" and peer_state(c2) == "alive", 20, "both alive")
        wait_for(lambda: all(ln["peer_link"] is not None for ln in status(c1)["heartbeat"]["links"]), 5, "both links heard")  # type: ignore[index]
        text1 = run_cli(c1, "status").stdout
        assert "this link carries node2's link #2" in text1 and "this link carries node2's link #1" in text1
    finally:
        d1.stop()
        d2.stop()
