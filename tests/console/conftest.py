"""Fixtures of the console tests: a stand-in daemon on a real control socket, and the console in-process.

The stand-in is the daemon's own :class:`ControlServer` with handlers that
answer from a document the test controls and record every request, so a
test can say exactly what the console asked the daemon. Tests against real
daemons live in test_process.py and test_browser.py.
"""

from __future__ import annotations

import copy
import json
import shutil
import tempfile
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import httpx
import pytest

from clever_cluster.daemon.console import auth
from clever_cluster.daemon.console.app import AppConfig, ConsoleApp
from clever_cluster.daemon.console.daemonlink import DaemonLink, Feed
from clever_cluster.daemon.console.http import HttpServer
from clever_cluster.daemon.control import Caller, ControlError, ControlServer

PASSWORD = "correct horse battery staple"
DATA = Path(__file__).parent / "data"
# What node1's daemon answered on the two-node lab (sim/nodelab) to `status` and `history`
# (node1 active, node2 standby; the lab's temporary paths replaced by /var/lib/lab).
STATUS: dict[str, Any] = json.loads((DATA / "status-node1.json").read_text())
HISTORY: dict[str, Any] = json.loads((DATA / "history-node1.json").read_text())


def make_active(status: dict[str, Any], node: str | None) -> None:
    """Change ``status`` as the daemon's would read once ``node`` (or no node) holds the resources."""
    status["active_node"] = node
    status["active_why"] = "this node holds DRBD Primary" if node == status["node"] else f"{node} reports phase PRIMARY holding resources"
    for rec in status["nodes"]:
        rec["phase"] = "PRIMARY" if rec["name"] == node else "SECONDARY"
    status["phase"] = "PRIMARY" if node == status["node"] else "SECONDARY"


class FakeDaemon:
    """A control socket answering like a daemon; ``calls`` records (command, args)."""

    def __init__(self, directory: Path) -> None:
        self.path = directory / "control.sock"
        self.status = copy.deepcopy(STATUS)
        self.history = copy.deepcopy(HISTORY)
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.refuse: dict[str, ControlError] = {}
        self.server: ControlServer | None = None

    def handlers(self) -> dict[str, Any]:
        out: dict[str, Any] = {"status": self._status, "history": self._history}
        for cmd in ("migrate", "unmigrate", "standby", "unstandby", "maintenance", "cleanup", "forcestart", "forcestop"):
            out[cmd] = self._make(cmd)
        return out

    async def start(self) -> None:
        self.server = ControlServer(self.path, self.handlers())
        await self.server.start()

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.close()
            self.server = None

    async def _status(self, args: Mapping[str, Any], caller: Caller) -> Any:
        self.calls.append(("status", dict(args)))
        return self.status

    async def _history(self, args: Mapping[str, Any], caller: Caller) -> Any:
        self.calls.append(("history", dict(args)))
        return self.history

    def _make(self, cmd: str) -> Any:
        async def handler(args: Mapping[str, Any], caller: Caller) -> Any:
            self.calls.append((cmd, dict(args)))
            if cmd in self.refuse:
                raise self.refuse[cmd]
            return {"next": f"{cmd} accepted"}
        return handler

    def commands(self) -> list[str]:
        return [c for c, _a in self.calls]


class Console:
    """The console's app and server in this test's event loop, and an HTTP client for it."""

    def __init__(self, daemon: FakeDaemon, *, password_file: Path | None, ssl_context: Any = None, interval: float = 0.1,
                 clock: Any = None, **server_kw: Any) -> None:
        self.link = DaemonLink(daemon.path, timeout=2.0)
        self.feed = Feed(self.link, interval=interval, history_interval=interval)
        self.app = ConsoleApp(AppConfig(password_file, ssl_context is not None), self.link, self.feed, clock=clock)
        self.server = HttpServer(self.app.handle, "127.0.0.1", 0, ssl_context=ssl_context, extra_headers=self.app.security_headers,
                                 **server_kw)
        self.task: Any = None

    async def start(self) -> None:
        import asyncio

        await self.server.start()
        self.task = asyncio.create_task(self.feed.run())
        await self.feed.wait_newer(0, 5)

    async def stop(self) -> None:
        import asyncio
        import contextlib

        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
        await self.server.close()

    @property
    def url(self) -> str:
        host, port = self.server.address
        return f"{'https' if self.server.ssl_context else 'http'}://{host}:{port}"

    def client(self, **kw: Any) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.url, timeout=10, **kw)


@pytest.fixture
def short_dir() -> Any:
    d = Path(tempfile.mkdtemp(prefix="ccc-"))  # Unix socket paths are limited to 107 bytes
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def password_file(short_dir: Path) -> Path:
    p = short_dir / "console.password"
    p.write_text(auth.make_hash(PASSWORD, log2_n=10) + "\n")  # a cheap hash keeps the tests fast; the format is the same
    p.chmod(0o600)
    return p


@pytest.fixture
async def daemon(short_dir: Path) -> AsyncIterator[FakeDaemon]:
    d = FakeDaemon(short_dir)
    await d.start()
    yield d
    await d.stop()


@pytest.fixture
async def console(daemon: FakeDaemon, password_file: Path) -> AsyncIterator[Console]:
    c = Console(daemon, password_file=password_file)
    await c.start()
    yield c
    await c.stop()


@pytest.fixture
async def readonly_console(daemon: FakeDaemon) -> AsyncIterator[Console]:
    c = Console(daemon, password_file=None)
    await c.start()
    yield c
    await c.stop()


async def login(client: httpx.AsyncClient, password: str = PASSWORD) -> str:
    """Log in; returns the CSRF token."""
    r = await client.post("/api/login", json={"password": password})
    assert r.status_code == 200, r.text
    token: str = r.json()["csrf"]
    return token
