"""The console's HTTP side, endpoint by endpoint, against a stand-in daemon on a real control socket."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import ssl
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
import trustme

from clever_cluster.daemon.console import actions
from clever_cluster.daemon.console.app import STATIC
from clever_cluster.daemon.control import ControlError

from .conftest import PASSWORD, STATUS, Console, FakeDaemon, login, make_active

STATIC_DIR = Path(__file__).resolve().parents[2] / "daemon" / "console" / "static"


async def first_event(client: httpx.AsyncClient, pred: Any = None, timeout: float = 10) -> dict[str, Any]:
    """The first server-sent view (matching ``pred``) on /api/events."""
    async def read() -> dict[str, Any]:
        async with client.stream("GET", "/api/events") as r:
            assert r.status_code == 200 and r.headers["content-type"] == "text/event-stream"
            async for line in r.aiter_lines():
                if line.startswith("data: "):
                    v: dict[str, Any] = json.loads(line[6:])
                    if pred is None or pred(v):
                        return v
        raise AssertionError("the stream ended")
    return await asyncio.wait_for(read(), timeout)


# --------------------------------------------------------------------------- reading


async def test_the_page_and_its_assets_are_served_with_a_strict_policy(console: Console) -> None:
    async with console.client() as c:
        for path, (_name, ctype) in STATIC.items():
            r = await c.get(path)
            assert r.status_code == 200 and r.headers["content-type"] == ctype and r.content
            csp = r.headers["content-security-policy"]
            assert "default-src 'none'" in csp and "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
            assert r.headers["x-content-type-options"] == "nosniff" and r.headers["cache-control"] == "no-store"
        page = (await c.get("/")).text
        assert '<script src="/static/app.js"' in page and 'href="/static/app.css"' in page
        assert (await c.get("/nothing")).status_code == 404
        assert (await c.put("/")).status_code == 405
        assert (await c.post("/api/view", json={})).status_code == 405


def test_no_asset_comes_from_elsewhere() -> None:
    """Everything the page loads is served by the console (no CDN): every src/href is a local path."""
    for f in STATIC_DIR.iterdir():
        text = f.read_text()
        for ref in re.findall(r"""(?:src|href)\s*=\s*["']([^"']+)""", text):
            assert ref.startswith("/static/"), f"{f.name} loads {ref}"
        assert "@import" not in text and "url(" not in text, f"{f.name} loads something by CSS"
        assert not re.search(r"fetch\(\s*['\"]https?:", text) and "EventSource(\"http" not in text


async def test_view_and_status_follow_the_daemon(console: Console, daemon: FakeDaemon) -> None:
    async with console.client() as c:
        v = (await c.get("/api/view")).json()
        assert v["daemon"]["ok"] and v["summary"]["active"] == "node1"
        assert [n["name"] for n in v["nodes"]] == ["node1", "node2"]
        raw = (await c.get("/api/status")).json()
        assert raw["status"]["verdict"] == STATUS["verdict"] and raw["error"] is None
        # The daemon changes its mind: the live stream brings it without asking again.
        make_active(daemon.status, "node2")
        v = await first_event(c, lambda v: v["summary"]["active"] == "node2")
        assert {n["name"]: n["active"] for n in v["nodes"]} == {"node1": False, "node2": True}


async def test_a_daemon_that_stops_answering_shows_as_such(console: Console, daemon: FakeDaemon) -> None:
    async with console.client() as c:
        await daemon.stop()
        v = await first_event(c, lambda v: not v["daemon"]["ok"])
        assert "daemon not answering" in v["daemon"]["message"] and v["nodes"] == []
        await login(c)
        r = await c.post("/api/action", json={"action": "cleanup"}, headers={"x-csrf-token": (await c.get("/api/session")).json()["csrf"]})
        assert r.status_code == 503 and r.json()["code"] == "unreachable"


async def test_browsers_do_not_multiply_the_load_on_the_daemon(console: Console, daemon: FakeDaemon) -> None:
    """Fifty readers and five live views cost the daemon what one poller costs: the feed's own requests."""
    async with console.client() as c:
        before_feed, before_daemon = console.feed.polls, daemon.commands().count("status")
        streams = [asyncio.create_task(first_event(c, lambda v: False, timeout=1.5)) for _ in range(5)]
        for _ in range(50):
            assert (await c.get("/api/view")).status_code == 200
            assert (await c.get("/api/status")).status_code == 200
        for t in streams:
            with pytest.raises(asyncio.TimeoutError):
                await t
        asked = daemon.commands().count("status") - before_daemon
        assert asked == console.feed.polls - before_feed  # every status request came from the feed, none from a browser
        assert asked < 40  # ~1.5 s at 0.1 s per poll, not one per browser request


# --------------------------------------------------------------------------- read-only and login


async def test_read_only_console_refuses_login_and_actions(readonly_console: Console, daemon: FakeDaemon) -> None:
    async with readonly_console.client() as c:
        assert (await c.get("/api/session")).json()["mode"] == "read-only"
        assert (await c.post("/api/login", json={"password": PASSWORD})).status_code == 403
        for path in ("/api/preview", "/api/action"):
            r = await c.post(path, json={"action": "cleanup"}, headers={"x-csrf-token": "x"})
            assert r.status_code == 403 and "read-only" in r.json()["error"]
    assert "cleanup" not in daemon.commands()


async def test_actions_need_a_session(console: Console, daemon: FakeDaemon) -> None:
    async with console.client() as c:
        assert (await c.get("/api/session")).json() | {"actions": None} == {"mode": "locked", "csrf": None, "actions": None}
        r = await c.post("/api/action", json={"action": "cleanup"})
        assert r.status_code == 401
        c.cookies.set("cc_session", "forged-token")
        assert (await c.post("/api/action", json={"action": "cleanup"}, headers={"x-csrf-token": "x"})).status_code == 401
    assert "cleanup" not in daemon.commands()


async def test_login_sets_a_strict_http_only_cookie_and_logout_ends_the_session(console: Console, daemon: FakeDaemon) -> None:
    async with console.client() as c:
        r = await c.post("/api/login", json={"password": PASSWORD})
        assert r.status_code == 200
        cookie = r.headers["set-cookie"]
        assert cookie.startswith("cc_session=") and "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/" in cookie
        assert "Secure" not in cookie  # plain HTTP: a Secure cookie would never come back
        csrf = r.json()["csrf"]
        assert (await c.get("/api/session")).json()["mode"] == "unlocked"
        assert (await c.post("/api/logout", json={}, headers={"x-csrf-token": csrf})).status_code == 200
        assert (await c.get("/api/session")).json()["mode"] == "locked"
        assert (await c.post("/api/action", json={"action": "cleanup"}, headers={"x-csrf-token": csrf})).status_code == 401
    assert "cleanup" not in daemon.commands()


async def test_wrong_passwords_are_rate_limited_before_any_hash_is_computed(console: Console, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="clever_cluster")
    async with console.client() as c:
        for _ in range(console.app.limiter.per_address):
            assert (await c.post("/api/login", json={"password": "guess"})).status_code == 401
        r = await c.post("/api/login", json={"password": PASSWORD})  # even the right one, now
        assert r.status_code == 429 and int(r.headers["retry-after"]) > 0
        assert "too many failed logins" in r.json()["error"]
    results = [getattr(rec, "fields", {}).get("CLEVER_CONSOLE_RESULT") for rec in caplog.records]
    assert results.count("wrong_password") == console.app.limiter.per_address and "rate_limited" in results
    assert all(getattr(rec, "fields", {}).get("CLEVER_CONSOLE_REMOTE") == "127.0.0.1" for rec in caplog.records if getattr(rec, "fields", None))


async def test_malformed_logins_are_refused(console: Console) -> None:
    async with console.client() as c:
        assert (await c.post("/api/login", json={"pass": PASSWORD})).status_code == 400
        assert (await c.post("/api/login", content=b"password=x", headers={"content-type": "application/x-www-form-urlencoded"})).status_code == 415
        assert (await c.post("/api/login", content=b"{not json", headers={"content-type": "application/json"})).status_code == 400


# --------------------------------------------------------------------------- CSRF and cross-site


async def test_csrf_token_is_required_and_checked(console: Console, daemon: FakeDaemon) -> None:
    async with console.client() as c:
        csrf = await login(c)
        assert (await c.post("/api/action", json={"action": "cleanup"})).status_code == 403
        assert (await c.post("/api/action", json={"action": "cleanup"}, headers={"x-csrf-token": csrf[:-2] + "xx"})).status_code == 403
        assert "cleanup" not in daemon.commands()
        assert (await c.post("/api/action", json={"action": "cleanup"}, headers={"x-csrf-token": csrf})).status_code == 200
        assert daemon.commands().count("cleanup") == 1


async def test_cross_site_requests_are_refused_even_with_the_token(console: Console, daemon: FakeDaemon) -> None:
    async with console.client() as c:
        csrf = await login(c)
        h = {"x-csrf-token": csrf}
        r = await c.post("/api/action", json={"action": "cleanup"}, headers={**h, "origin": "http://evil.example"})
        assert r.status_code == 403 and "Origin" in r.json()["error"]
        r = await c.post("/api/action", json={"action": "cleanup"}, headers={**h, "sec-fetch-site": "cross-site"})
        assert r.status_code == 403
        r = await c.post("/api/action", content=b'{"action": "cleanup"}', headers={**h, "content-type": "text/plain"})
        assert r.status_code == 415
        r = await c.post("/api/action", json={"action": "cleanup"}, headers={**h, "origin": console.url})
        assert r.status_code == 200
    assert daemon.commands().count("cleanup") == 1


async def test_unknown_host_names_are_refused(console: Console) -> None:
    """DNS rebinding: a page of evil.example resolved to this address still says Host: evil.example."""
    async with console.client() as c:
        r = await c.get("/api/status", headers={"host": "evil.example"})
        assert r.status_code == 421
        assert (await c.get("/api/status", headers={"host": "localhost:1"})).status_code == 200


# --------------------------------------------------------------------------- actions


async def test_every_action_sends_its_control_command(console: Console, daemon: FakeDaemon, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="clever_cluster")
    async with console.client() as c:
        h = {"x-csrf-token": await login(c)}
        for a in actions.ACTIONS:
            node = "node2" if a.node == "any" else None
            r = await c.post("/api/action", json={"action": a.name, "node": node}, headers=h)
            assert r.status_code == 200 and r.json() == {"ok": True, "message": f"{a.command} accepted"}
            cmd, args = [x for x in daemon.calls if x[0] not in ("status", "history")][-1]
            assert cmd == a.command
            assert args == {**dict(a.extra), **({"node": "node2"} if a.node == "any" else {})}  # migrate bans the daemon's own node
    done = [rec for rec in caplog.records if getattr(rec, "fields", {}).get("CLEVER_CONSOLE_RESULT") == "ok"]
    assert [rec.fields["CLEVER_ACTION"] for rec in done] == [a.name for a in actions.ACTIONS]  # type: ignore[attr-defined]
    assert all(rec.fields["CLEVER_CONSOLE_REMOTE"] == "127.0.0.1" and rec.fields["CLEVER_CONSOLE_SESSION"] for rec in done)  # type: ignore[attr-defined]


async def test_bad_action_requests_never_reach_the_daemon(console: Console, daemon: FakeDaemon) -> None:
    async with console.client() as c:
        h = {"x-csrf-token": await login(c)}
        assert (await c.post("/api/action", json={"action": "rm -rf"}, headers=h)).status_code == 400
        assert (await c.post("/api/action", json={"action": "standby", "node": "node9"}, headers=h)).status_code == 400
        r = await c.post("/api/action", json={"action": "migrate", "node": "node2"}, headers=h)  # migrate bans the console's own node
        assert r.status_code == 400 and "the node this console runs on (node1)" in r.json()["error"]
    assert set(daemon.commands()) == {"status", "history"}


# The clevervm command line of each console action (acting on node2 where the action takes a node).
CLI = {"migrate": ["migrate"], "unmigrate": ["unmigrate"], "standby": ["standby", "node2"], "unstandby": ["unstandby", "node2"],
       "maintenance_on": ["maintenance", "on"], "maintenance_off": ["maintenance", "off"], "cleanup": ["cleanup"],
       "forcestart": ["forcestart"], "forcestop": ["forcestop"]}


async def clevervm(daemon: FakeDaemon, *argv: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", "import sys; from clever_cluster.daemon.cli import main; sys.exit(main())", "--socket", str(daemon.path),
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_each_action_is_the_command_clevervm_sends(console: Console, daemon: FakeDaemon) -> None:
    """The console and clevervm send the daemon the same command with the same arguments, and show the same answer."""
    assert set(CLI) == set(actions.BY_NAME)
    async with console.client() as c:
        h = {"x-csrf-token": await login(c)}
        for a in actions.ACTIONS:
            code, out, err = await clevervm(daemon, *CLI[a.name])
            assert code == 0, err
            by_cli = [x for x in daemon.calls if x[0] not in ("status", "history")][-1]
            r = await c.post("/api/action", json={"action": a.name, "node": "node2" if a.node == "any" else None}, headers=h)
            by_console = [x for x in daemon.calls if x[0] not in ("status", "history")][-1]
            assert by_console == by_cli, a.name
            assert r.json()["message"] == out.strip()


async def test_the_daemons_refusal_is_shown_as_clevervm_shows_it(console: Console, daemon: FakeDaemon,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="clever_cluster")
    problems = ["node2 is lost, not heard", "save space unknown: no save_dir"]
    daemon.refuse["migrate"] = ControlError(f"migrate refused: {'; '.join(problems)} (add --force to ban node1 anyway)",
                                            "preflight_failed", problems)
    async with console.client() as c:
        h = {"x-csrf-token": await login(c)}
        r = await c.post("/api/action", json={"action": "migrate"}, headers=h)
    code, _out, err = await clevervm(daemon, "migrate")
    assert r.status_code == 409 and r.json()["code"] == "preflight_failed" and code == 1
    assert err.splitlines() == [f"clevervm: {r.json()['error']}", *(f"  {p}" for p in r.json()["details"])]
    refused = [rec for rec in caplog.records if getattr(rec, "fields", {}).get("CLEVER_ACTION") == "migrate"]
    assert refused and refused[0].fields["CLEVER_CONSOLE_RESULT"] == "refused:preflight_failed"  # type: ignore[attr-defined]


async def test_the_confirmation_says_what_happens_and_never_acts(console: Console, daemon: FakeDaemon) -> None:
    async with console.client() as c:
        h = {"x-csrf-token": await login(c)}
        r = (await c.post("/api/preview", json={"action": "migrate"}, headers=h)).json()
        assert r["node"] == "node1" and r["sentence"].startswith("node1 is banned, so the resources move to node2 by handover")
        r = (await c.post("/api/preview", json={"action": "standby", "node": "node2"}, headers=h)).json()
        assert r["sentence"] == "node2 goes into standby: it will not take the resources. Nothing moves now."
        make_active(daemon.status, "node2")
        await console.feed.wait_newer(console.feed.seq, 5)
        await console.feed.wait_newer(console.feed.seq, 5)
        r = (await c.post("/api/preview", json={"action": "migrate"}, headers=h)).json()
        assert r["sentence"].startswith("node1 is banned; it does not hold the resources, so nothing moves")
        r = (await c.post("/api/preview", json={"action": "standby", "node": "node2"}, headers=h)).json()
        assert r["sentence"].startswith("node2 goes into standby and may not hold the resources: they move to node1")
    assert set(daemon.commands()) == {"status", "history"}  # a confirmation never acts


# --------------------------------------------------------------------------- limits


async def test_oversized_and_malformed_requests(console: Console) -> None:
    host, port = console.server.address
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(b"POST /api/login HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: 999999\r\n\r\n")
    await writer.drain()
    assert (await reader.readline()).startswith(b"HTTP/1.1 413")
    writer.close()
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(b"GARBAGE\r\n\r\n")
    await writer.drain()
    assert (await reader.readline()).startswith(b"HTTP/1.1 400")
    writer.close()


async def test_idle_connections_are_bounded_and_dropped(daemon: FakeDaemon) -> None:
    con = Console(daemon, password_file=None, max_connections=3, request_timeout=0.5)
    await con.start()
    try:
        host, port = con.server.address
        idle = [await asyncio.open_connection(host, port) for _ in range(3)]
        extra_r, _extra_w = await asyncio.open_connection(host, port)
        assert await asyncio.wait_for(extra_r.read(), 5) == b""  # refused at once: all slots taken
        for r, _w in idle:  # a client that sends nothing is told so and dropped
            assert (await asyncio.wait_for(r.readline(), 5)).startswith(b"HTTP/1.1 408")
        async with con.client() as c:
            assert (await c.get("/api/view")).status_code == 200
        assert con.server.refused >= 1
    finally:
        await con.stop()


# --------------------------------------------------------------------------- TLS


async def test_tls_serves_https_and_marks_the_cookie_secure(daemon: FakeDaemon, password_file: Path, short_dir: Path) -> None:
    ca = trustme.CA()
    cert = ca.issue_cert("localhost", "127.0.0.1")
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(server_ctx)
    con = Console(daemon, password_file=password_file, ssl_context=server_ctx)
    await con.start()
    try:
        client_ctx = ssl.create_default_context()
        ca.configure_trust(client_ctx)
        async with con.client(verify=client_ctx) as c:
            r = await c.post("/api/login", json={"password": PASSWORD})
            assert r.status_code == 200
            cookie = r.headers["set-cookie"]
            assert cookie.startswith("__Host-cc_session=") and "; Secure" in cookie and "HttpOnly" in cookie
            assert r.headers["strict-transport-security"].startswith("max-age=")
            assert (await c.get("/api/session")).json()["mode"] == "unlocked"
        plain = con.url.replace("https://", "http://")
        async with httpx.AsyncClient(timeout=5) as c:
            with pytest.raises(httpx.HTTPError):
                await c.get(plain + "/api/view")
        async with httpx.AsyncClient(timeout=5, verify=ssl.create_default_context()) as c:  # a client that does not trust the CA
            with pytest.raises(httpx.ConnectError):
                await c.get(con.url + "/api/view")
    finally:
        await con.stop()
