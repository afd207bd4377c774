"""sd_notify through the real systemd library: messages arrive; a vanished socket is counted, not raised."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from clever_cluster.daemon.notify import Notifier


def test_notifications_arrive_and_a_vanished_socket_is_counted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "notify"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(5)
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    n = Notifier({"NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": "2000000"})
    n.ready("starting")
    assert b"READY=1" in sock.recv(4096)
    assert n.cycle_done(10.0, "active") is True
    got = sock.recv(4096)
    assert b"WATCHDOG=1" in got and b"STATUS=active" in got
    sock.close()
    path.unlink()
    # systemd went away (or the daemon was started by hand with a stale NOTIFY_SOCKET): carry on.
    n.status("still deciding")
    n.stopping()
    assert n.send_errors == 2
