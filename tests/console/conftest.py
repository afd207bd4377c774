"""Fixtures of the console tests: a stand-in daemon on a real control socket, and the console in-process.

The stand-in is the daemon's own :class:`ControlServer` with handlers that
answer from a document the test controls and record every request, so a
test can say exactly what the console asked the daemon. Tests against real
daemons live in test_process.py and test_browser.py.
"""

from __future__ import annotations

import copy
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
# A status document in the shape of the daemon's (skeleton fields plus the heartbeat part).
STATUS: dict[str, Any] = {
    "node": "node1", "peer": "node2", "cluster": "testcluster", "phase": "PRIMARY", "verdict": "node1: active, all running",
    "pid": 1, "version": "0.1.0", "uptime_seconds": 12.0, "loop_lag_seconds": 0.001, "loop_stalls": 0,
    "heartbeat": {
        "name": "node2", "state": "alive", "silent_for": 0.05,
        "links": [{"name": "hb0", "bound": True, "up": True, "loss_in": 0.0, "loss_out": 0.01, "rtt_smoothed_ms": 0.4},
                  {"name": "hb1", "bound": True, "up": False, "loss_in": 1.0, "loss_out": 1.0, "rtt_smoothed_ms": None}],
        "intent": {"record": {"version": 3, "origin": "node1", "target_role": "started", "bans": [], "standby": [], "maintenance": False},
                   "summary": "target started", "acknowledged": True},
        "report": {"phase": "SECONDARY", "gateway_score": 2, "eligible": True,
                   "resources": {"drbd": {"role": "Secondary", "disk": "UpToDate"}, "mounted": False, "ip": False, "vms": []}},
    },
}


class FakeDaemon:
    """A control socket answering like a daemon; ``calls`` records (command, args)."""

    def __init__(self, directory: Path) -> None:
        self.path = directory / "control.sock"
        self.status = copy.deepcopy(STATUS)
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.preview_answer: dict[str, Any] | None = None  # None: the daemon has no preview command
        self.refuse: dict[str, ControlError] = {}
        self.server: ControlServer | None = None

    def handlers(self) -> dict[str, Any]:
        out: dict[str, Any] = {"status": self._status}
        for cmd in ("migrate", "unmigrate", "standby", "unstandby", "maintenance", "cleanup", "forcestart", "forcestop"):
            out[cmd] = self._make(cmd)
        if self.preview_answer is not None:
            out["preview"] = self._make("preview")
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

    def _make(self, cmd: str) -> Any:
        async def handler(args: Mapping[str, Any], caller: Caller) -> Any:
            self.calls.append((cmd, dict(args)))
            if cmd in self.refuse:
                raise self.refuse[cmd]
            if cmd == "preview":
                return self.preview_answer
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
