"""The daemon logs to journald with structured fields (native protocol, captured for real)."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from clever_cluster.sim.harness import DaemonProcess
from clever_cluster.sim.journal import JournalCapture, parse_entry
from tests.conftest import require_root


def test_parse_entry_forms() -> None:
    data = b"MESSAGE=hello\nPRIORITY=6\nCLEVER_REASON\n" + (11).to_bytes(8, "little") + b"two\nlines!!\n" + b"X=1\n"
    assert parse_entry(data) == {"MESSAGE": "hello", "PRIORITY": "6", "CLEVER_REASON": "two\nlines!!", "X": "1"}
    with pytest.raises(ValueError):
        parse_entry(b"MESSAGE=unterminated")


@pytest.fixture
def journal(tmp_path: Path):
    j = JournalCapture(tmp_path)
    yield j
    j.close()


def test_daemon_logs_structured_entries_to_journald(lab_configs: tuple[Path, Path], journal: JournalCapture) -> None:
    require_root()
    host_socket = Path("/run/systemd/journal/socket")
    existed = host_socket.exists()
    cfg = lab_configs[0]
    cfg.write_text(cfg.read_text().replace('target = "stderr"', 'target = "auto"'))
    d = DaemonProcess(cfg, argv_prefix=journal.wrap_argv([])).start()
    try:
        started = journal.wait_for(lambda e: "started: node node1" in e.get("MESSAGE", ""), 20)
        assert started["SYSLOG_IDENTIFIER"] == "clever-clusterd"
        assert started["PRIORITY"] == "6"
        cfg.write_text(cfg.read_text() + "\n[bogus]\n")
        d.signal(signal.SIGHUP)
        refused = journal.wait_for(lambda e: e.get("CLEVER_REASON") == "reload_refused", 10)
        assert refused["PRIORITY"] == "3" and "bogus: unknown key" in refused["MESSAGE"]
        d.signal(signal.SIGTERM)
        journal.wait_for(lambda e: e.get("MESSAGE") == "shutdown complete", 10)
        assert d.proc is not None and d.proc.wait(10) == 0
        assert d.log() == ""  # nothing went to stderr: journald was used
    finally:
        d.stop()
    assert host_socket.exists() == existed, "the capture must not touch the host's /run/systemd"
