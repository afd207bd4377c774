"""The console as its own process next to real daemons: start-up errors, journal entries, and a
stopped or killed console that changes nothing for the daemon."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import threading
import time
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


def loop_health(st: dict[str, Any]) -> tuple[float, int]:
    """(loop lag, stalls): top level in main's skeleton, under ``daemon.loop`` in the status schema 1."""
    loop = (st.get("daemon") or {}).get("loop")
    if loop is not None:
        return loop["lag_seconds"], loop["stalls"]
    return st["loop_lag_seconds"], st["loop_stalls"]


def decision(st: dict[str, Any]) -> tuple[str, str]:
    d = st.get("decision")
    return st["phase"], (d["code"] if d else st["verdict"])


def heartbeat_marks(st: dict[str, Any]) -> tuple[int, float]:
    hb = st["heartbeat"]
    return sum(ln["sent"] for ln in hb["links"]), hb["last_heard_mono"]


def watchers(url: str, n: int, stop: threading.Event) -> list[threading.Thread]:
    """Browsers holding live views open (each reads its event stream until told to stop)."""
    def watch() -> None:
        while not stop.is_set():
            try:
                with httpx.stream("GET", url + "/api/events", timeout=httpx.Timeout(3.0)) as r:
                    for _line in r.iter_lines():
                        if stop.is_set():
                            return
            except httpx.HTTPError:
                time.sleep(0.1)

    threads = [threading.Thread(target=watch, daemon=True) for _ in range(n)]
    for t in threads:
        t.start()
    return threads


def assert_daemon_carries_on(c1: Path, c2: Path, before: dict[str, Any], what: str) -> dict[str, Any]:
    """node1 keeps sending and hearing heartbeats, deciding, and answering promptly, while ``what``."""
    sent0, heard0 = heartbeat_marks(before)
    # 3 s of heartbeats at 100 ms on two links: a daemon that waited for the console would send none.
    wait_for(lambda: heartbeat_marks(daemon_status(c1))[0] >= sent0 + 60, 15, f"node1 to send 60 heartbeats while {what}", interval=0.2)
    st = daemon_status(c1)
    _sent, heard = heartbeat_marks(st)
    assert heard > heard0, f"node1 heard nothing from node2 while {what}"
    lag, stalls = loop_health(st)
    assert st["heartbeat"]["state"] == "alive" and stalls == loop_health(before)[1], st
    assert lag < 0.5, lag  # below policy.stall_threshold (0.5 s): not a stall
    assert decision(st) == decision(before)  # its decision did not change
    assert st["heartbeat"]["event_counts"].get("peer_lost", 0) == 0
    assert daemon_status(c2)["heartbeat"]["event_counts"].get("peer_lost", 0) == 0
    assert st["heartbeat"]["longest_silence"] is None or st["heartbeat"]["longest_silence"] < 0.5
    return st


@pytest.mark.slow
def test_a_stopped_or_killed_console_leaves_the_daemon_unaffected(pair: tuple[Path, Path, DaemonProcess, DaemonProcess]) -> None:
    c1, c2, d1, d2 = pair
    wait_for(lambda: both_alive(c1, c2), 20, "both daemons to hear each other")
    con = ConsoleProcess(c1, interval=0.1).start()  # polling ten times a second: always a request in flight
    stop = threading.Event()
    threads = watchers(con.url, 4, stop)
    try:
        wait_for(lambda: con.get("/api/view")["nodes"][1]["state"] == "online", 10, "the console to show node2 online")
        before = daemon_status(c1)
        con.signal(signal.SIGSTOP)
        st = assert_daemon_carries_on(c1, c2, before, "the console is stopped")
        con.signal(signal.SIGCONT)
        seq = con.get("/api/status")["seq"]
        wait_for(lambda: con.get("/api/status")["seq"] > seq + 3, 10, "the console to poll again after SIGCONT")
        con.signal(signal.SIGKILL)
        assert con.proc is not None and con.proc.wait(5) == -signal.SIGKILL
        assert_daemon_carries_on(c1, c2, st, "the console is killed")
    finally:
        stop.set()
        con.stop()
        for t in threads:
            t.join(5)
    assert "Traceback" not in d1.log() and "Traceback" not in d2.log()


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
        # main's daemon has no intent commands yet: the refusal is shown and recorded all the same.
        assert r.status_code in (200, 409), r.text
        wrong = journal.wait_for(lambda e: e.get("CLEVER_CONSOLE_RESULT") == "wrong_password", 10)
        assert wrong["CLEVER_CONSOLE_REMOTE"] == "127.0.0.1" and wrong["PRIORITY"] == "4"
        login = journal.wait_for(lambda e: e.get("CLEVER_CONSOLE_RESULT") == "login", 10)
        act = journal.wait_for(lambda e: e.get("CLEVER_ACTION") == "maintenance_on", 10)
        assert act["CLEVER_CONSOLE_REMOTE"] == "127.0.0.1" and act["CLEVER_CONSOLE_SESSION"] == login["CLEVER_CONSOLE_SESSION"]
        assert act["CLEVER_CONSOLE_RESULT"] == ("ok" if r.status_code == 200 else f"refused:{r.json()['code']}")
        assert "from 127.0.0.1" in act["MESSAGE"]
        assert PASSWORD not in json.dumps(journal.snapshot())
    finally:
        con.stop()
        journal.close()
