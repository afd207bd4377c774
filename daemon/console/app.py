"""The console's routes: the page, the live view, login, and the operator actions.

| route | what |
|---|---|
| ``GET /`` and ``/static/*`` | the page, its script and style (all served from the package: no external asset) |
| ``GET /api/view`` | the page's view model (:mod:`.view`) of the latest snapshot |
| ``GET /api/events`` | the same as server-sent events, one per new snapshot (keep-alive comments between) |
| ``GET /api/status`` | the latest snapshot as fetched: the daemon's status document (as ``clevervm status --json``), history, errors |
| ``GET /api/session`` | read-only or not, logged in or not, the CSRF token of the session, the actions |
| ``POST /api/login`` / ``/api/logout`` | JSON ``{"password": ...}``; a session cookie |
| ``POST /api/preview`` / ``/api/action`` | JSON ``{"action": name, "node": name}``: what will happen / do it |

Invariants:
- Every POST except login needs a live session and its CSRF token in the
  ``X-CSRF-Token`` header; a POST whose ``Origin`` or ``Sec-Fetch-Site``
  says another site sent it is refused before anything else; bodies must be
  JSON (``Content-Type: application/json``), which a cross-site form cannot send.
- Without ``console.password_file`` nothing can log in and no action runs:
  read-only.
- Requests whose ``Host`` is not an address, ``localhost``, this machine's
  name or a name in ``console.allowed_hosts`` are refused (DNS rebinding).
- Every action and every login is logged with the remote address; actions
  as journal fields (``CLEVER_ACTION``, ``CLEVER_CONSOLE_REMOTE``,
  ``CLEVER_CONSOLE_SESSION``, ``CLEVER_CONSOLE_RESULT``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import importlib.resources
import ipaddress
import json
import socket
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from .. import logsetup
from ..control import CommandFailed, DaemonUnreachable
from . import actions, auth, view
from .daemonlink import DaemonLink, Feed
from .http import Request, Response

log = logsetup.get("console.app")

STATIC = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/static/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/static/app.css": ("app.css", "text/css; charset=utf-8"),
    "/static/icon.svg": ("icon.svg", "image/svg+xml"),
}
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
       "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
MAX_STREAMS = 32
KEEPALIVE = 15.0


@dataclasses.dataclass(frozen=True)
class AppConfig:
    password_file: Path | None
    tls: bool
    allowed_hosts: tuple[str, ...] = ()


def _json(status: int, obj: Any, headers: list[tuple[str, str]] | None = None) -> Response:
    return Response(status, json.dumps(obj).encode(), "application/json", headers or [])


def _error(status: int, message: str, headers: list[tuple[str, str]] | None = None) -> Response:
    return _json(status, {"error": message}, headers)


class ConsoleApp:
    def __init__(self, cfg: AppConfig, link: DaemonLink, feed: Feed, *, clock: Callable[[], float] | None = None) -> None:
        self.cfg = cfg
        self.link = link
        self.feed = feed
        self.sessions = auth.Sessions(clock) if clock else auth.Sessions()
        self.limiter = auth.LoginLimiter(clock) if clock else auth.LoginLimiter()
        self.cookie = "__Host-cc_session" if cfg.tls else "cc_session"
        self._static = {path: (importlib.resources.files(__package__).joinpath("static", name).read_bytes(), ctype)
                        for path, (name, ctype) in STATIC.items()}
        self._view_cache: tuple[int, bytes] = (-1, b"")
        self._streams = 0
        self._check_lock = asyncio.Lock()  # one scrypt at a time: guesses cannot pile up CPU work
        self._hostnames = {"localhost", socket.gethostname().lower(), socket.getfqdn().lower(), *(h.lower() for h in cfg.allowed_hosts)}

    @property
    def read_only(self) -> bool:
        return self.cfg.password_file is None

    def security_headers(self, req: Request) -> list[tuple[str, str]]:
        h = [("content-security-policy", CSP), ("x-content-type-options", "nosniff"), ("x-frame-options", "DENY"),
             ("referrer-policy", "no-referrer"), ("cache-control", "no-store"), ("cross-origin-opener-policy", "same-origin"),
             ("cross-origin-resource-policy", "same-origin")]
        if self.cfg.tls:
            h.append(("strict-transport-security", "max-age=31536000"))
        return h

    # ------------------------------------------------------------------ dispatch

    async def handle(self, req: Request) -> Response:
        if not self._host_ok(req.headers.get("host")):
            return _error(421, "unknown host name; add it to console.allowed_hosts")
        if req.method in ("GET", "HEAD"):
            if req.path in self._static:
                body, ctype = self._static[req.path]
                return Response(200, body, ctype)
            get = {"/api/view": self._view, "/api/status": self._status, "/api/session": self._session_info, "/api/events": self._events}
            if req.path in get:
                return await get[req.path](req)
        elif req.method == "POST":
            post = {"/api/login": self._login, "/api/logout": self._logout, "/api/preview": self._preview, "/api/action": self._action}
            if req.path in post:
                refused = self._cross_site(req)
                if refused is not None:
                    return refused
                return await post[req.path](req)
        else:
            return _error(405, f"method {req.method} not allowed")
        known = set(self._static) | {"/api/view", "/api/status", "/api/session", "/api/events", "/api/login", "/api/logout",
                                     "/api/preview", "/api/action"}
        return _error(405, f"{req.method} not allowed on {req.path}") if req.path in known else _error(404, "not found")

    def _host_ok(self, host: str | None) -> bool:
        if not host:
            return False
        name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
        name = name.strip("[]").lower()
        try:
            ipaddress.ip_address(name)
            return True
        except ValueError:
            return name in self._hostnames

    def _cross_site(self, req: Request) -> Response | None:
        origin = req.headers.get("origin")
        if origin is not None:
            expected = f"{'https' if req.tls else 'http'}://{req.headers.get('host', '')}"
            if origin.lower() != expected.lower():
                return _error(403, "cross-site request refused (Origin)")
        if req.headers.get("sec-fetch-site", "same-origin") not in ("same-origin", "none"):
            return _error(403, "cross-site request refused (Sec-Fetch-Site)")
        if req.headers.get("content-type", "").split(";")[0].strip().lower() != "application/json":
            return _error(415, "send JSON (Content-Type: application/json)")
        return None

    # ------------------------------------------------------------------ reading

    def _view_bytes(self) -> bytes:
        snap = self.feed.snapshot
        if self._view_cache[0] != snap["seq"]:
            self._view_cache = (snap["seq"], json.dumps(view.build(snap)).encode())
        return self._view_cache[1]

    async def _view(self, req: Request) -> Response:
        return Response(200, self._view_bytes(), "application/json")

    async def _status(self, req: Request) -> Response:
        return _json(200, self.feed.snapshot)

    async def _session_info(self, req: Request) -> Response:
        s = self.sessions.get(req.cookie(self.cookie))
        mode = "read-only" if self.read_only else "unlocked" if s is not None else "locked"
        acts = [{"name": a.name, "label": a.label, "node": a.node} for a in actions.ACTIONS]
        return _json(200, {"mode": mode, "csrf": s.csrf if s is not None else None, "actions": acts})

    async def _events(self, req: Request) -> Response:
        if self._streams >= MAX_STREAMS:
            return _error(503, "too many live views open; close some tabs", [("retry-after", "10")])
        return Response(200, content_type="text/event-stream", stream=self._event_stream())

    async def _event_stream(self) -> AsyncIterator[bytes]:
        self._streams += 1  # counted from the first chunk: a stream never started never ends either
        try:
            yield b"retry: 2000\n\n"
            seq = -1
            while True:
                snap = await self.feed.wait_newer(seq, KEEPALIVE)
                if snap["seq"] == seq:
                    yield b": keep-alive\n\n"
                    continue
                seq = snap["seq"]
                yield b"data: " + self._view_bytes() + b"\n\n"
        finally:
            self._streams -= 1

    # ------------------------------------------------------------------ login

    async def _login(self, req: Request) -> Response:
        if self.cfg.password_file is None:
            return _error(403, "this console is read-only: console.password_file is not set")
        wait = self.limiter.retry_after(req.remote)
        if wait > 0:
            log.warning("console login from %s refused: too many failed attempts", req.remote,
                        extra={"fields": {"CLEVER_CONSOLE_REMOTE": req.remote, "CLEVER_CONSOLE_RESULT": "rate_limited"}})
            return _error(429, f"too many failed logins; try again in {wait:.0f} s", [("retry-after", str(int(wait) + 1))])
        body = _body(req)
        password = body.get("password") if body is not None else None
        if not isinstance(password, str) or not password or len(password) > 1024:
            return _error(400, "send {\"password\": \"...\"}")
        try:
            stored = auth.read_password_file(self.cfg.password_file)
        except auth.PasswordFileError as e:
            log.error("console login impossible: %s", e)
            return _error(503, "the console's password file cannot be used; see the console's log")
        async with self._check_lock:
            good = await asyncio.to_thread(stored.matches, password)
        if not good:
            self.limiter.failed(req.remote)
            log.warning("console login from %s failed: wrong password", req.remote,
                        extra={"fields": {"CLEVER_CONSOLE_REMOTE": req.remote, "CLEVER_CONSOLE_RESULT": "wrong_password"}})
            return _error(401, "wrong password")
        self.limiter.succeeded(req.remote)
        s = self.sessions.create(req.remote)
        log.info("console login from %s (session %s)", req.remote, s.label,
                 extra={"fields": {"CLEVER_CONSOLE_REMOTE": req.remote, "CLEVER_CONSOLE_SESSION": s.label, "CLEVER_CONSOLE_RESULT": "login"}})
        cookie = f"{self.cookie}={s.token}; Path=/; HttpOnly; SameSite=Strict; Max-Age={int(auth.Sessions.ABSOLUTE)}"
        if self.cfg.tls:
            cookie += "; Secure"
        return _json(200, {"mode": "unlocked", "csrf": s.csrf}, [("set-cookie", cookie)])

    async def _logout(self, req: Request) -> Response:
        s, refused = self._authorised(req)
        if refused is not None:
            return refused
        assert s is not None
        self.sessions.drop(s.token)
        log.info("console logout from %s (session %s)", req.remote, s.label)
        expired = f"{self.cookie}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0" + ("; Secure" if self.cfg.tls else "")
        return _json(200, {"mode": "locked"}, [("set-cookie", expired)])

    def _authorised(self, req: Request) -> tuple[auth.Session | None, Response | None]:
        if self.read_only:
            return None, _error(403, "this console is read-only: console.password_file is not set")
        s = self.sessions.get(req.cookie(self.cookie))
        if s is None:
            return None, _error(401, "log in first")
        if not auth.csrf_ok(s, req.headers.get("x-csrf-token")):
            log.warning("console request from %s refused: missing or wrong CSRF token", req.remote,
                        extra={"fields": {"CLEVER_CONSOLE_REMOTE": req.remote, "CLEVER_CONSOLE_RESULT": "csrf_refused"}})
            return None, _error(403, "missing or wrong CSRF token; reload the page")
        return s, None

    # ------------------------------------------------------------------ actions

    def _resolve(self, req: Request) -> tuple[actions.Action, str | None, list[str], str | None]:
        body = _body(req)
        if body is None:
            raise actions.ActionRefused("send {\"action\": ..., \"node\": ...}")
        v = view.build(self.feed.snapshot)
        nodes = [n["name"] for n in v["nodes"]]  # the console's own node first
        action, node = actions.resolve(body.get("action"), body.get("node"), nodes)
        return action, node, nodes, v["summary"]["active"]

    async def _preview(self, req: Request) -> Response:
        _s, refused = self._authorised(req)
        if refused is not None:
            return refused
        try:
            action, node, nodes, active = self._resolve(req)
        except actions.ActionRefused as e:
            return _error(400, str(e))
        return _json(200, {"action": action.name, "label": action.label, "node": node,
                           "sentence": actions.confirmation(action, node, nodes, active)})

    async def _action(self, req: Request) -> Response:
        s, refused = self._authorised(req)
        if refused is not None:
            return refused
        assert s is not None
        try:
            action, node, _nodes, _active = self._resolve(req)
        except actions.ActionRefused as e:
            return _error(400, str(e))
        fields = {"CLEVER_ACTION": action.name, "CLEVER_CONSOLE_REMOTE": req.remote, "CLEVER_CONSOLE_SESSION": s.label}
        what = action.name + (f" {node}" if node else "")
        try:
            answer = await actions.run(self.link, action, node)
        except CommandFailed as e:
            log.warning("console action %s from %s (session %s) refused by the daemon: %s", what, req.remote, s.label, e,
                        extra={"fields": {**fields, "CLEVER_CONSOLE_RESULT": f"refused:{e.code}"}})
            # The daemon's refusal as clevervm prints it: the sentence, then its details.
            return _json(409, {"ok": False, "error": str(e), "code": e.code, "details": e.details})
        except DaemonUnreachable as e:
            log.error("console action %s from %s (session %s) failed: %s", what, req.remote, s.label, e,
                      extra={"fields": {**fields, "CLEVER_CONSOLE_RESULT": "unreachable"}})
            return _json(503, {"ok": False, "error": str(e), "code": "unreachable"})
        finally:
            self.feed.poke()
        log.info("console action %s from %s (session %s): %s", what, req.remote, s.label, answer,
                 extra={"fields": {**fields, "CLEVER_CONSOLE_RESULT": "ok"}})
        return _json(200, {"ok": True, "message": answer})


def _body(req: Request) -> dict[str, Any] | None:
    try:
        obj = json.loads(req.body)
    except ValueError:
        return None
    return obj if isinstance(obj, dict) else None
