"""Run a real ``clever-cluster-console`` for tests, the docs screenshot and demos.

:class:`ConsoleProcess` starts the console as its own process (as systemd
does), on a TCP port that was free a moment ago, waits until it answers, and
always ends the process it started, by its PID only.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .harness import wait_for


def free_tcp_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class ConsoleProcess:
    def __init__(self, config: Path, *, host: str = "127.0.0.1", port: int | None = None, interval: float = 0.5,
                 log_path: Path | None = None, argv_prefix: Sequence[str] = (), env: dict[str, str] | None = None) -> None:
        self.config = Path(config)
        self.host, self.port = host, port or free_tcp_port(host)
        self.log_path = log_path or self.config.with_name(self.config.stem + "-console.log")
        self.argv = [*argv_prefix, sys.executable, "-m", "clever_cluster.daemon.console.main", "--config", str(self.config),
                     "--listen", f"{self.host}:{self.port}", "--interval", str(interval)]
        self.env = {**os.environ, **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, timeout: float = 20.0) -> ConsoleProcess:
        logf = open(self.log_path, "ab")  # noqa: SIM115 - the child owns it
        try:
            self.proc = subprocess.Popen(self.argv, env=self.env, stdout=logf, stderr=subprocess.STDOUT, start_new_session=True)
        finally:
            logf.close()
        wait_for(self._answers, timeout, f"the console on {self.url}", interval=0.05)
        return self

    def _answers(self) -> bool:
        if self.proc is None or self.proc.poll() is not None:
            raise RuntimeError(f"the console exited:\n{self.log()[-3000:]}")
        try:
            self.get("/api/session", timeout=1.0)
        except (OSError, urllib.error.URLError):
            return False
        return True

    def get(self, path: str, timeout: float = 5.0) -> Any:
        with urllib.request.urlopen(self.url + path, timeout=timeout) as r:
            return json.loads(r.read())

    def signal(self, sig: int) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, sig)

    def stop(self, timeout: float = 10.0) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGCONT)  # a stopped process cannot act on SIGTERM
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return self.proc.returncode

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def __enter__(self) -> ConsoleProcess:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()
