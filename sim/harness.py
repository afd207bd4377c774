"""Process and timing helpers shared by the demo, the tests and the benchmarks.

- :func:`wait_for` polls a condition until a deadline (never a fixed sleep).
- :class:`NotifyListener` plays systemd's side of ``sd_notify``.
- :class:`DaemonProcess` runs one real ``clever-clusterd`` and always cleans
  up the process it started, by its PID only.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


class Timeout(AssertionError):
    pass


def wait_for(predicate: Callable[[], T], timeout: float, what: str = "condition", interval: float = 0.02) -> T:
    """Return the first truthy value of ``predicate()``; raise Timeout after ``timeout`` s.

    Exceptions from the predicate propagate: a predicate that may fail while
    the system is getting ready catches what it expects itself.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise Timeout(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


class NotifyListener:
    """A datagram socket standing in for systemd's NOTIFY_SOCKET."""

    def __init__(self, directory: Path | None = None) -> None:
        self._dir = Path(directory or tempfile.mkdtemp(prefix="cc-notify-"))
        self.path = self._dir / "notify.sock"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(self.path))
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.messages: list[dict[str, str]] = []

    def close(self) -> None:
        self.sock.close()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    def receive(self, timeout: float) -> dict[str, str] | None:
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(65536)
        except TimeoutError:
            return None
        msg = dict(line.split("=", 1) for line in data.decode().splitlines() if "=" in line)
        self.messages.append(msg)
        return msg

    def wait_for_key(self, key: str, timeout: float) -> dict[str, str]:
        """Return the first message (already received or new) that has ``key``."""
        for m in self.messages:
            if key in m:
                return m
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            got = self.receive(left)
            if got is not None and key in got:
                return got
        raise Timeout(f"no {key} notification within {timeout:g} s; got {self.messages}")


class DaemonProcess:
    """One ``clever-clusterd --config FILE`` child process."""

    def __init__(
        self,
        config: Path,
        *,
        env: dict[str, str] | None = None,
        log_path: Path | None = None,
        argv_prefix: Sequence[str] = (),
    ) -> None:
        self.config = Path(config)
        self.log_path = log_path or self.config.with_suffix(".log")
        self.env = {**os.environ, **(env or {})}
        self.argv = [*argv_prefix, sys.executable, "-m", "clever_cluster.daemon.main", "--config", str(self.config)]
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> DaemonProcess:
        logf = open(self.log_path, "ab")  # noqa: SIM115 - the child owns it
        try:
            self.proc = subprocess.Popen(self.argv, env=self.env, stdout=logf, stderr=subprocess.STDOUT, start_new_session=True)
        finally:
            logf.close()
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def signal(self, sig: int) -> None:
        if self.alive():
            os.kill(self.pid, sig)

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM, wait; SIGKILL if it does not exit. Returns the exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return self.proc.returncode

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def __enter__(self) -> DaemonProcess:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def run_cli(config: Path, *args: str, timeout: float = 30.0, env: dict[str, str] | None = None,
            argv_prefix: Sequence[str] = ()) -> subprocess.CompletedProcess[str]:
    """Run ``clevervm --config CONFIG ARGS`` as operators do, capturing output.

    ``argv_prefix`` (e.g. ``nsenter -t PID -m -n --``) runs it on a lab node.
    """
    return subprocess.run(
        [*argv_prefix, sys.executable, "-m", "clever_cluster.daemon.cli", "--config", str(config), *args],
        capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})}, check=False,
    )
