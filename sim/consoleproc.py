"""Run a real ``clever-cluster-console`` for tests, the docs screenshot and demos.

:class:`ConsoleProcess` is a :class:`~.harness.DaemonProcess` running the
console instead of the daemon, as its own process (as systemd does), on a
TCP port that was free a moment ago; :meth:`ConsoleProcess.start` waits
until it answers. It ends only the process it started, by its PID.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .harness import DaemonProcess, wait_for


def free_tcp_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class ConsoleProcess(DaemonProcess):
    def __init__(self, config: Path, *, host: str = "127.0.0.1", port: int | None = None, interval: float = 0.5,
                 log_path: Path | None = None, argv_prefix: Sequence[str] = (), env: dict[str, str] | None = None) -> None:
        config = Path(config)
        super().__init__(config, env=env, log_path=log_path or config.with_name(config.stem + "-console.log"), argv_prefix=argv_prefix)
        self.host, self.port = host, port or free_tcp_port(host)
        self.argv = [*argv_prefix, sys.executable, "-m", "clever_cluster.daemon.console.main", "--config", str(self.config),
                     "--listen", f"{self.host}:{self.port}", "--interval", str(interval)]

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout: float = 20.0) -> ConsoleProcess:
        super().start()
        wait_for(self._answers, timeout, f"the console on {self.url}", interval=0.05)
        return self

    def _answers(self) -> bool:
        if not self.alive():
            raise RuntimeError(f"the console exited:\n{self.log()[-3000:]}")
        try:
            self.get("/api/session", timeout=1.0)
        except (OSError, urllib.error.URLError):
            return False
        return True

    def get(self, path: str, timeout: float = 5.0) -> Any:
        with urllib.request.urlopen(self.url + path, timeout=timeout) as r:
            return json.loads(r.read())

    def stop(self, timeout: float = 10.0) -> int | None:
        if self.alive():
            os.kill(self.pid, signal.SIGCONT)  # a stopped process acts on SIGTERM only once it runs again
        return super().stop(timeout)

    def __enter__(self) -> ConsoleProcess:
        return self.start()
