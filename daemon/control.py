"""The control socket: how ``clevervm`` (and DRBD's handlers) talk to the daemon.

Protocol: a Unix stream socket under ``cluster.runtime_dir``. The client
sends one JSON object on one line, ``{"cmd": "status", "args": {...}}``; the
server answers with one line, ``{"ok": true, "result": ...}`` or
``{"ok": false, "error": "sentence", "code": "snake_case"}``, then the
client may send another request on the same connection.

Invariants:
- Access is by file mode: 0600 (root only) or 0660 with ``control_group``.
- A malformed, oversized or unknown request gets an error answer; it never
  raises into the daemon. A handler bug is logged with its traceback and
  answered as an internal error.
- Each request runs in its own task, so a slow request (a DRBD handler that
  waits for a fence) never delays another one.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import grp
import json
import os
import socket
import struct
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

from . import logsetup

SOCKET_NAME = "control.sock"
MAX_REQUEST = 256 * 1024
PROTOCOL = 1

log = logsetup.get("daemon.control")


class ControlError(Exception):
    """A refusal or failure to report to the client (not a daemon bug)."""

    def __init__(self, message: str, code: str = "failed", details: Any = None) -> None:
        super().__init__(message)
        self.code = code
        self.details = details


@dataclasses.dataclass(frozen=True)
class Caller:
    """Who sent a request (from SO_PEERCRED)."""

    pid: int
    uid: int
    gid: int

    def describe(self) -> str:
        try:
            import pwd

            user = pwd.getpwuid(self.uid).pw_name
        except (KeyError, ImportError):
            user = str(self.uid)
        return f"{user} (uid {self.uid}, pid {self.pid})"


Handler = Callable[[Mapping[str, Any], Caller], Awaitable[Any]]


def socket_path(runtime_dir: Path | str) -> Path:
    return Path(runtime_dir) / SOCKET_NAME


class ControlServer:
    def __init__(self, path: Path, handlers: Mapping[str, Handler], group: str | None = None) -> None:
        self.path = Path(path)
        self.handlers = dict(handlers)
        self.group = group
        self._server: asyncio.base_events.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
        if self.path.exists() or self.path.is_symlink():
            if _answers(self.path):
                raise RuntimeError(f"another daemon is answering on {self.path}")
            self.path.unlink()
        self._server = await asyncio.start_unix_server(self._serve, path=str(self.path), limit=MAX_REQUEST)
        if self.group is not None:
            os.chown(self.path, 0 if os.geteuid() == 0 else -1, grp.getgrnam(self.group).gr_gid)
            os.chmod(self.path, 0o660)
        else:
            os.chmod(self.path, 0o600)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            for t in list(self._tasks):
                t.cancel()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)
            self._server = None
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        caller = _peer_cred(writer)
        try:
            while True:
                try:
                    line = await reader.readline()
                except (ValueError, asyncio.LimitOverrunError):
                    await _send(writer, {"ok": False, "code": "too_large", "error": f"request larger than {MAX_REQUEST} bytes"})
                    return
                if not line:
                    return
                reply = await self._dispatch(line, caller)
                await _send(writer, reply)
        except (ConnectionError, asyncio.IncompleteReadError):
            return
        finally:
            self._tasks.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _dispatch(self, line: bytes, caller: Caller) -> dict[str, Any]:
        try:
            req = json.loads(line)
            if not isinstance(req, dict) or not isinstance(req.get("cmd"), str):
                raise ValueError("expected an object with a string 'cmd'")
            args = req.get("args", {})
            if not isinstance(args, dict):
                raise ValueError("'args' must be an object")
        except ValueError as e:
            return {"ok": False, "code": "bad_request", "error": f"malformed request: {e}"}
        cmd = req["cmd"]
        handler = self.handlers.get(cmd)
        if handler is None:
            return {"ok": False, "code": "unknown_command", "error": f"unknown command {cmd!r}"}
        try:
            result = await handler(args, caller)
        except ControlError as e:
            reply: dict[str, Any] = {"ok": False, "code": e.code, "error": str(e)}
            if e.details is not None:
                reply["details"] = e.details
            return reply
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("control command %r failed", cmd)
            return {"ok": False, "code": "internal_error", "error": f"internal error in {cmd!r}; see the daemon's log"}
        return {"ok": True, "result": result}


async def _send(writer: asyncio.StreamWriter, obj: Mapping[str, Any]) -> None:
    writer.write(json.dumps(obj, default=str).encode() + b"\n")
    await writer.drain()


def _peer_cred(writer: asyncio.StreamWriter) -> Caller:
    sock = writer.get_extra_info("socket")
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        pid, uid, gid = struct.unpack("3i", raw)
        return Caller(pid, uid, gid)
    except (OSError, AttributeError):
        return Caller(-1, -1, -1)


def _answers(path: Path) -> bool:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(1.0)
    try:
        s.connect(str(path))
        return True
    except OSError:
        return False
    finally:
        s.close()


# --------------------------------------------------------------------------- client


class DaemonUnreachable(Exception):
    """The daemon could not be asked: no socket, refused, closed or timed out."""


class CommandFailed(Exception):
    def __init__(self, message: str, code: str, details: Any = None) -> None:
        super().__init__(message)
        self.code = code
        self.details = details


class ControlClient:
    """Blocking client for the CLI. ``timeout=None`` waits for ever (DRBD handlers)."""

    def __init__(self, path: Path | str, timeout: float | None = 10.0) -> None:
        self.path = Path(path)
        self.timeout = timeout
        self._sock: socket.socket | None = None
        self._buf = b""

    def __enter__(self) -> ControlClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def _connect(self) -> socket.socket:
        if self._sock is None:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.settimeout(self.timeout)
            try:
                s.connect(str(self.path))
            except FileNotFoundError:
                s.close()
                raise DaemonUnreachable(f"daemon not running (no control socket at {self.path})") from None
            except PermissionError:
                s.close()
                raise DaemonUnreachable(f"permission denied on {self.path} (run as root or a member of cluster.control_group)") from None
            except OSError as e:
                s.close()
                raise DaemonUnreachable(f"daemon not answering on {self.path}: {e.strerror or e}") from None
            self._sock = s
        return self._sock

    def call(self, cmd: str, **args: Any) -> Any:
        s = self._connect()
        try:
            s.sendall(json.dumps({"cmd": cmd, "args": args}).encode() + b"\n")
            while b"\n" not in self._buf:
                chunk = s.recv(65536)
                if not chunk:
                    raise DaemonUnreachable("the daemon closed the connection before answering")
                self._buf += chunk
        except TimeoutError:
            self.close()
            raise DaemonUnreachable(f"no answer from the daemon within {self.timeout:g} s") from None
        except OSError as e:
            self.close()
            raise DaemonUnreachable(f"lost the connection to the daemon: {e.strerror or e}") from None
        line, self._buf = self._buf.split(b"\n", 1)
        try:
            reply = json.loads(line)
        except ValueError:
            raise DaemonUnreachable("the daemon answered with something that is not JSON") from None
        if not reply.get("ok"):
            raise CommandFailed(reply.get("error", "failed"), reply.get("code", "failed"), reply.get("details"))
        return reply.get("result")
