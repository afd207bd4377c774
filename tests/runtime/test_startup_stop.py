"""A daemon stopped before its first decision: what its peer learns (two real daemons on loopback, no DRBD)."""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Any

import pytest

from clever_cluster.sim.harness import DaemonProcess, NotifyListener, run_cli, wait_for


def peer_node(cfg: Path) -> dict[str, Any]:
    st = json.loads(run_cli(cfg, "status", "--json").stdout)
    return next(n for n in st["nodes"] if not n["self"])


@pytest.mark.slow
def test_a_daemon_stopped_before_drbd_was_observed_does_not_announce_a_clean_leave(lab_configs: tuple[Path, Path],
                                                                                  tmp_path: Path) -> None:
    """Sequence: the active's daemon restarts (resources kept) and, before it has observed DRBD and decided,
    it is stopped (systemctl stop). It announced `leaving` with a startup report that said nothing about the
    resources; its peer took it as a clean leave with nothing held (PeerStatus.LEFT, remembered in
    Durable.peer_left): no fence and no takeover for as long as the node stayed unheard, although DRBD was
    Primary there. The policy's model never produces that report (a starting node reports what it holds and
    never `leaving`). Now the startup report carries what is observed, and without a DRBD observation the
    stop is silent: the peer applies its loss rules."""
    n1, n2 = lab_configs
    for sub in ("n1", "n2"):
        (tmp_path / sub).mkdir()
    notes = [NotifyListener(tmp_path / "n1"), NotifyListener(tmp_path / "n2")]
    d1 = DaemonProcess(n1, env={"NOTIFY_SOCKET": str(notes[0].path)}).start()
    d2 = DaemonProcess(n2, env={"NOTIFY_SOCKET": str(notes[1].path)}).start()
    try:
        for n in notes:
            n.wait_for_key("READY", 30)
        # No DRBD in this lab: both stay STARTING (waiting for the first DRBD observation) and hear each other.
        seen = wait_for(lambda: (p := peer_node(n2))["online"] and p["mounted"] is not None and p, 30,
                        "node2 hearing node1's startup report with its observations")
        assert seen["phase"] == "STARTING" and seen["mounted"] is False and seen["ip"] is False  # observed, not blank
        d1.signal(signal.SIGTERM)
        wait_for(lambda: not d1.alive(), 30, "node1's daemon to stop")
        assert "no `leaving` announcement" in d1.log()
        gone = wait_for(lambda: (p := peer_node(n2))["state"] != "heard" and p, 30, "node2 to miss node1")
        assert gone["state"] != "left", gone
    finally:
        d1.stop()
        d2.stop()
        for n in notes:
            n.close()
