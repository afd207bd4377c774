"""`clevervm maintenance on --offline`: the daemon's first start (after Pacemaker) only observes."""

from __future__ import annotations

import socket
from pathlib import Path

from clever_cluster.daemon import config as config_mod
from clever_cluster.daemon.control import socket_path
from clever_cluster.daemon.heartbeat.intent import IntentStore
from clever_cluster.sim import configgen
from clever_cluster.sim.harness import run_cli


def test_offline_maintenance_is_written_for_the_daemon_to_load(tmp_path: Path) -> None:
    n1, _ = configgen.write_pair(tmp_path / "lab")
    cfg = config_mod.load(n1, check_files=False)
    r = run_cli(n1, "maintenance", "on", "--offline")
    assert r.returncode == 0, r.stderr
    assert "maintenance on written to" in r.stdout and "version 1" in r.stdout
    rec = IntentStore(cfg.cluster.state_dir, "node1").load()  # what the daemon reads at start
    assert rec.maintenance and rec.version == 1 and rec.origin == "node1"
    again = run_cli(n1, "maintenance", "on", "--offline")
    assert again.returncode == 0 and "already in maintenance" in again.stdout
    assert IntentStore(cfg.cluster.state_dir, "node1").load().version == 1


def test_offline_only_turns_maintenance_on_and_only_without_a_daemon(tmp_path: Path) -> None:
    n1, _ = configgen.write_pair(tmp_path / "lab")
    cfg = config_mod.load(n1, check_files=False)
    r = run_cli(n1, "maintenance", "off", "--offline")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "--offline exists only for maintenance on" in r.stderr
    # A socket that accepts but never answers (a hung daemon) is not "stopped": nothing is written.
    cfg.cluster.runtime_dir.mkdir(parents=True, exist_ok=True)
    path = socket_path(cfg.cluster.runtime_dir)
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        srv.bind(str(path))
        srv.listen(1)
        r = run_cli(n1, "maintenance", "on", "--offline", timeout=60)
    finally:
        srv.close()
    assert r.returncode == 1 and "only while the daemon is stopped" in r.stderr, r.stderr
    assert not (cfg.cluster.state_dir / "intent.json").exists()
