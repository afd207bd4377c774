"""The console as its own process next to real daemons: start-up errors and journal entries.

(A stopped or killed console changing nothing for the daemon is tested on the
full lab, where the daemons decide: tests/e2e/test_console.py.)"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from clever_cluster.daemon.console import auth
from clever_cluster.daemon.control import ControlClient, socket_path
from clever_cluster.sim import configgen
from clever_cluster.sim.consoleproc import ConsoleProcess, free_tcp_port
from clever_cluster.sim.harness import DaemonProcess, wait_for
from clever_cluster.sim.journal import JournalCapture
from tests.conftest import require_root

PASSWORD = "a console passphrase"


def run_console(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "clever_cluster.daemon.console.main", *args], capture_output=True, text=True,
                          timeout=30, check=False)


def test_console_is_off_without_listen(lab_configs: tuple[Path, Path]) -> None:
    r = run_console("--config", str(lab_configs[0]))
    assert r.returncode == 0 and "console.listen is empty" in r.stderr and "the console is off" in r.stderr


def test_start_up_problems_are_one_clear_message(lab_configs: tuple[Path, Path], tmp_path: Path) -> None:
    cfg = lab_configs[0]
    base = cfg.read_text()
    pw = tmp_path / "pw"
    pw.write_text(auth.make_hash(PASSWORD, log2_n=10) + "\n")
    pw.chmod(0o644)
    cases = [
        (f'[console]\nlisten = "127.0.0.1:{free_tcp_port()}"\npassword_file = "{pw}"\n', 1, "readable by others"),
        (f'[console]\nlisten = "127.0.0.1:{free_tcp_port()}"\ntls_cert = "{tmp_path}/c.pem"\n', 1, "give both console.tls_cert and console.tls_key"),
        (f'[console]\nlisten = "127.0.0.1:{free_tcp_port()}"\ntls_cert = "{tmp_path}/c.pem"\ntls_key = "{tmp_path}/k.pem"\n', 1, "cannot load"),
        ('[console]\nlisten = "nowhere"\n', 1, "console.listen"),
        ('[console]\nlisen = "127.0.0.1:1"\n', 1, "did you mean 'listen'"),
    ]
    for extra, code, says in cases:
        cfg.write_text(base + extra)
        r = run_console("--config", str(cfg))
        assert (r.returncode, says in r.stderr) == (code, True), (extra, r.stderr)
        assert "Traceback" not in r.stderr
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        cfg.write_text(base)
        r = run_console("--config", str(cfg), "--listen", f"127.0.0.1:{busy.getsockname()[1]}")
        assert r.returncode == 1 and "cannot listen on 127.0.0.1" in r.stderr
    assert run_console("--config", str(cfg), "--listen", "x").returncode == 2


# --------------------------------------------------------------------------- next to real daemons


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[tuple[Path, Path, DaemonProcess, DaemonProcess]]:
    c1, c2 = configgen.write_pair(tmp_path / "lab")
    d1, d2 = DaemonProcess(c1).start(), DaemonProcess(c2).start()
    try:
        yield c1, c2, d1, d2
    finally:
        d1.stop()
        d2.stop()


def daemon_status(cfg: Path) -> dict[str, Any]:
    """Straight from the daemon's control socket, with a short deadline: a daemon that stalls fails this."""
    from clever_cluster.daemon.config import runtime_dir_of

    with ControlClient(socket_path(runtime_dir_of(cfg)), timeout=2.0) as c:
        st: dict[str, Any] = c.call("status")
    return st


def both_alive(c1: Path, c2: Path) -> bool:
    try:
        return daemon_status(c1)["heartbeat"]["state"] == daemon_status(c2)["heartbeat"]["state"] == "alive"
    except Exception:  # noqa: BLE001 - not up yet
        return False


@pytest.mark.slow
def test_logins_and_actions_are_journal_entries_with_the_remote_address(pair: tuple[Path, Path, DaemonProcess, DaemonProcess],
                                                                        tmp_path: Path) -> None:
    require_root()
    c1, c2, _d1, _d2 = pair
    pw = tmp_path / "console.password"
    pw.write_text(auth.make_hash(PASSWORD, log2_n=10) + "\n")
    pw.chmod(0o600)
    c1.write_text(c1.read_text().replace('target = "stderr"', 'target = "auto"') + f'\n[console]\npassword_file = "{pw}"\n')
    wait_for(lambda: both_alive(c1, c2), 20, "both daemons to hear each other")
    journal = JournalCapture(tmp_path)
    con = ConsoleProcess(c1, argv_prefix=journal.wrap_argv([]))
    try:
        con.start()
        started = journal.wait_for(lambda e: "listening on http://127.0.0.1" in e.get("MESSAGE", ""), 10)
        assert started["SYSLOG_IDENTIFIER"] == "clever-cluster-console" and "actions after login" in started["MESSAGE"]
        with httpx.Client(base_url=con.url, timeout=10) as c:
            assert c.post("/api/login", json={"password": "wrong guess"}).status_code == 401
            csrf = c.post("/api/login", json={"password": PASSWORD}).json()["csrf"]
            r = c.post("/api/action", json={"action": "maintenance_on"}, headers={"x-csrf-token": csrf})
        assert r.status_code == 200 and r.json()["message"].startswith("maintenance on (both nodes)"), r.text
        wrong = journal.wait_for(lambda e: e.get("CLEVER_CONSOLE_RESULT") == "wrong_password", 10)
        assert wrong["CLEVER_CONSOLE_REMOTE"] == "127.0.0.1" and wrong["PRIORITY"] == "4"
        login = journal.wait_for(lambda e: e.get("CLEVER_CONSOLE_RESULT") == "login", 10)
        act = journal.wait_for(lambda e: e.get("CLEVER_ACTION") == "maintenance_on", 10)
        assert act["CLEVER_CONSOLE_REMOTE"] == "127.0.0.1" and act["CLEVER_CONSOLE_SESSION"] == login["CLEVER_CONSOLE_SESSION"]
        assert act["CLEVER_CONSOLE_RESULT"] == "ok"
        assert "from 127.0.0.1" in act["MESSAGE"]
        assert PASSWORD not in json.dumps(journal.snapshot())
    finally:
        con.stop()
        journal.close()
