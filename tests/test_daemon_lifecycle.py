"""The daemon skeleton as systemd runs it: a real process, a real NOTIFY_SOCKET,
real signals and the real control socket."""

from __future__ import annotations

import json
import os
import signal
import socket
from pathlib import Path

import pytest

from clever_cluster.daemon import control
from clever_cluster.sim.harness import DaemonProcess, NotifyListener, run_cli, wait_for


@pytest.fixture
def notify(tmp_path: Path):
    n = NotifyListener(tmp_path)
    yield n
    n.close()


def start(config: Path, notify: NotifyListener, **env: str) -> DaemonProcess:
    d = DaemonProcess(config, env={"NOTIFY_SOCKET": str(notify.path), **env}).start()
    notify.wait_for_key("READY", 20)
    return d


def test_ready_then_stopping_on_sigterm(lab_configs: tuple[Path, Path], notify: NotifyListener) -> None:
    d = start(lab_configs[0], notify)
    try:
        ready = notify.wait_for_key("READY", 1)
        assert ready["READY"] == "1"
        assert ready["MAINPID"] == str(d.pid)
        assert "node1" in ready["STATUS"]
        d.signal(signal.SIGTERM)
        stopping = notify.wait_for_key("STOPPING", 10)
        assert stopping["STOPPING"] == "1"
        assert d.proc is not None and d.proc.wait(10) == 0
        log = d.log()
        assert "shutdown: close control socket done" in log and "shutdown complete" in log
        assert not (lab_configs[0].parent / "node1" / "run" / "control.sock").exists()
    finally:
        d.stop()


def test_watchdog_pings_stop_while_the_loop_is_stopped(lab_configs: tuple[Path, Path], notify: NotifyListener) -> None:
    d = start(lab_configs[0], notify, WATCHDOG_USEC="200000")
    try:
        notify.wait_for_key("WATCHDOG", 5)
        d.signal(signal.SIGSTOP)
        while notify.receive(0.05) is not None:  # what was sent before the stop
            pass
        assert notify.receive(0.5) is None, "a stopped daemon cannot have completed a cycle"
        d.signal(signal.SIGCONT)
        got = notify.receive(5)
        assert got is not None and "WATCHDOG" in got
    finally:
        d.signal(signal.SIGCONT)
        d.stop()


def test_no_watchdog_pings_without_watchdog_usec(lab_configs: tuple[Path, Path], notify: NotifyListener) -> None:
    d = start(lab_configs[0], notify)
    try:
        while notify.receive(0.5) is not None:
            pass
        assert not any("WATCHDOG" in m for m in notify.messages)
    finally:
        d.stop()


def test_sighup_with_broken_config_keeps_old(lab_configs: tuple[Path, Path], notify: NotifyListener) -> None:
    cfg = lab_configs[0]
    d = start(cfg, notify)
    try:
        original = cfg.read_text()
        cfg.write_text(original.replace('[heartbeat]\n', '[heartbeat]\ntimeout = "50ms"\n'))
        d.signal(signal.SIGHUP)
        wait_for(lambda: "reload refused" in d.log(), 10, "the reload refusal in the log")
        assert "heartbeat.timeout: must be at least 3 x heartbeat.interval" in d.log()
        assert d.alive()
        st = json.loads(run_cli(cfg, "status", "--json").stdout)
        assert st["daemon"]["reloads"]["failed"] == 1 and st["daemon"]["reloads"]["ok"] == 0
        assert any("heartbeat.timeout" in p for p in st["daemon"]["reloads"]["last_error"])
        # A good file is then taken.
        cfg.write_text(original.replace("[policy]\n", "") + '\n[policy]\nmigration_threshold = 5\n')
        d.signal(signal.SIGHUP)
        wait_for(lambda: "configuration reloaded" in d.log(), 10, "the reload")
        assert "changed: policy" in d.log()
    finally:
        d.stop()


def test_reload_refuses_identity_change(lab_configs: tuple[Path, Path], notify: NotifyListener) -> None:
    cfg = lab_configs[0]
    d = start(cfg, notify)
    try:
        cfg.write_text(cfg.read_text().replace('name = "democluster"', 'name = "other"'))
        r = run_cli(cfg, "reload")
        assert r.returncode == 1
        assert "cluster.name: changing this needs a restart" in r.stderr
        assert json.loads(run_cli(cfg, "status", "--json").stdout)["cluster"] == "democluster"
    finally:
        d.stop()


def test_status_json_and_text(lab_configs: tuple[Path, Path], notify: NotifyListener) -> None:
    d = start(lab_configs[0], notify)
    try:
        r = run_cli(lab_configs[0], "status", "--json")
        assert r.returncode == 0, r.stderr
        st = json.loads(r.stdout)
        assert st["node"] == "node1" and st["peer"] == "node2" and st["phase"] == "STARTING"
        assert st["daemon"]["pid"] == d.pid and st["daemon"]["config_path"] == str(lab_configs[0].resolve())
        assert st["daemon"]["uptime_seconds"] >= 0 and st["schema"] == 1
        text = run_cli(lab_configs[0], "status")
        assert text.returncode == 0
        assert "Node node1: phase STARTING" in text.stdout and f"pid {d.pid}" in text.stdout
        sock = lab_configs[0].parent / "node1" / "run" / "control.sock"
        assert oct(sock.stat().st_mode & 0o777) == oct(0o600)
    finally:
        d.stop()


def test_clevervm_without_daemon_exits_3(lab_configs: tuple[Path, Path]) -> None:
    r = run_cli(lab_configs[0], "status")
    assert r.returncode == 3
    assert r.stderr.strip().startswith("clevervm: daemon not running")
    assert "Traceback" not in r.stderr
    # what can be read locally, under a banner
    assert "NOT RUNNING" in r.stdout and "Floating IP 192.0.2.50/24: not here" in r.stdout


def test_clevervm_usage_errors(lab_configs: tuple[Path, Path], tmp_path: Path) -> None:
    assert run_cli(lab_configs[0]).returncode == 2
    r = run_cli(lab_configs[0], "no-such-verb")
    assert r.returncode == 2 and "invalid choice" in r.stderr
    bad = tmp_path / "bad.toml"
    bad.write_text("[cluster\n")
    r = run_cli(bad, "status")
    assert r.returncode == 1 and "not valid TOML" in r.stderr and "Traceback" not in r.stderr


def test_control_socket_survives_garbage(lab_configs: tuple[Path, Path], notify: NotifyListener) -> None:
    d = start(lab_configs[0], notify)
    path = lab_configs[0].parent / "node1" / "run" / "control.sock"
    try:
        for payload in (b"not json\n", b"[1,2]\n", b'{"cmd": 5}\n', b'{"cmd": "nope"}\n', b'{"cmd":"status","args":[]}\n'):
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.settimeout(5)
                s.connect(str(path))
                s.sendall(payload)
                reply = json.loads(s.makefile().readline())
                assert reply["ok"] is False and reply["code"] in ("bad_request", "unknown_command")
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(5)
            s.connect(str(path))
            s.sendall(b"x" * (control.MAX_REQUEST + 10) + b"\n")
            reply = json.loads(s.makefile().readline())
            assert reply["code"] == "too_large"
        with control.ControlClient(path) as c:
            assert c.call("ping") == {"pong": True}
            assert c.call("status")["node"] == "node1"  # two requests on one connection
    finally:
        d.stop()


def test_second_daemon_refuses_the_socket(lab_configs: tuple[Path, Path], notify: NotifyListener) -> None:
    d = start(lab_configs[0], notify)
    d2 = DaemonProcess(lab_configs[0], log_path=lab_configs[0].with_suffix(".second.log")).start()
    try:
        assert d2.proc is not None and d2.proc.wait(20) == 1
        assert "another daemon is answering" in d2.log()
        assert d.alive() and run_cli(lab_configs[0], "status").returncode == 0
    finally:
        d2.stop()
        d.stop()


def test_stale_socket_is_replaced(lab_configs: tuple[Path, Path], notify: NotifyListener) -> None:
    run = lab_configs[0].parent / "node1" / "run"
    run.mkdir(parents=True)
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(run / "control.sock"))
    stale.close()  # leaves the file behind with nobody listening
    d = start(lab_configs[0], notify)
    try:
        assert run_cli(lab_configs[0], "status").returncode == 0
    finally:
        d.stop()
    assert os.geteuid() >= 0
