"""A small HTTP/1.1 server: asyncio streams carrying h11's sans-IO protocol machine.

h11 parses and frames (request line, headers, Content-Length and chunked
bodies, keep-alive); this module only moves bytes and enforces the limits a
console exposed on a network needs.

Invariants:
- Bounded everything: concurrent connections (``max_connections``; more are
  closed at once), header size (h11's ``max_incomplete_event_size``), body
  size (``max_body``, else 413), time to receive a request
  (``request_timeout``, else 408: a slowloris holds one slot for that long
  at most), time to deliver a response or one stream chunk
  (``write_timeout``: a browser that stops reading is dropped).
- A handler that raises is answered with 500 and logged; the server goes on.
- Deadlines use ``asyncio.timeout`` (``wait_for`` can lose a cancellation on 3.11).
- Streams (server-sent events) are async iterators of chunks; the
  connection closes when the iterator ends, the client goes away or the
  server closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import ssl
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable
from http.cookies import CookieError, SimpleCookie

import h11

from .. import logsetup

log = logsetup.get("console.http")

SERVER = "clever-cluster-console"


@dataclasses.dataclass
class Request:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]  # lower-case names; a repeated header keeps its first value
    body: bytes
    remote: str
    tls: bool

    def cookie(self, name: str) -> str | None:
        raw = self.headers.get("cookie")
        if not raw:
            return None
        jar: SimpleCookie = SimpleCookie()
        try:
            jar.load(raw)
        except CookieError:
            return None
        morsel = jar.get(name)
        return morsel.value if morsel is not None else None


@dataclasses.dataclass
class Response:
    status: int
    body: bytes = b""
    content_type: str = "text/plain; charset=utf-8"
    headers: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    stream: AsyncIterator[bytes] | None = None  # set: the body is streamed (chunked) instead of ``body``


Handler = Callable[[Request], Awaitable[Response]]


class _BadRequest(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class HttpServer:
    def __init__(self, handler: Handler, host: str, port: int, *, ssl_context: ssl.SSLContext | None = None,
                 max_connections: int = 64, max_body: int = 16 * 1024, max_header: int = 16 * 1024,
                 request_timeout: float = 10.0, idle_timeout: float = 60.0, write_timeout: float = 10.0,
                 extra_headers: Callable[[Request], list[tuple[str, str]]] | None = None) -> None:
        self.handler = handler
        self.host, self.port = host, port
        self.ssl_context = ssl_context
        self.max_connections = max_connections
        self.max_body, self.max_header = max_body, max_header
        self.request_timeout, self.idle_timeout, self.write_timeout = request_timeout, idle_timeout, write_timeout
        self.extra_headers = extra_headers
        self._server: asyncio.base_events.Server | None = None
        self._conns: set[asyncio.Task[None]] = set()
        self.refused = 0  # connections closed because max_connections were open

    @property
    def address(self) -> tuple[str, int]:
        assert self._server is not None and self._server.sockets
        host, port = self._server.sockets[0].getsockname()[:2]
        return str(host), int(port)

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, self.host, self.port, ssl=self.ssl_context,
                                                  ssl_handshake_timeout=self.request_timeout if self.ssl_context else None,
                                                  limit=64 * 1024, backlog=128)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            for t in list(self._conns):
                t.cancel()
            for t in list(self._conns):
                with contextlib.suppress(BaseException):
                    await t
            with contextlib.suppress(Exception):
                async with asyncio.timeout(2):
                    await self._server.wait_closed()
            self._server = None

    # ------------------------------------------------------------------ one connection

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        if len(self._conns) >= self.max_connections:
            self.refused += 1
            writer.close()
            return
        self._conns.add(task)
        peer = writer.get_extra_info("peername")
        remote = f"{peer[0]}" if isinstance(peer, tuple) else "unknown"
        tls = writer.get_extra_info("sslcontext") is not None
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=self.max_header)
        try:
            first = True
            while True:
                try:
                    async with asyncio.timeout(self.request_timeout if first else self.idle_timeout):
                        req = await self._read_request(conn, reader, remote, tls)
                except TimeoutError:
                    if conn.their_state is h11.SEND_BODY or (conn.their_state is h11.IDLE and first):
                        await self._send_error(conn, writer, 408, "request timeout")
                    return
                except _BadRequest as e:
                    await self._send_error(conn, writer, e.status, str(e))
                    return
                if req is None:
                    return
                first = False
                resp = await self._handle(req)
                if self.extra_headers is not None:
                    resp.headers = [*self.extra_headers(req), *resp.headers]
                if not await self._send(conn, writer, resp, req):
                    return
                if conn.our_state is h11.MUST_CLOSE or conn.their_state is h11.MUST_CLOSE or resp.stream is not None:
                    return
                try:
                    conn.start_next_cycle()
                except h11.LocalProtocolError:
                    return
        except (ConnectionError, ssl.SSLError, h11.LocalProtocolError):
            return
        except asyncio.CancelledError:
            # Only close() cancels a connection: this task ends here (asyncio's stream
            # callback would otherwise report the cancellation as an error).
            return
        finally:
            self._conns.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                async with asyncio.timeout(1):
                    await writer.wait_closed()

    async def _read_request(self, conn: h11.Connection, reader: asyncio.StreamReader, remote: str, tls: bool) -> Request | None:
        head: h11.Request | None = None
        body = bytearray()
        while True:
            try:
                event = conn.next_event()
            except h11.RemoteProtocolError as e:
                raise _BadRequest(e.error_status_hint, f"bad request: {e}") from None
            if event is h11.NEED_DATA:
                data = await reader.read(64 * 1024)
                try:
                    conn.receive_data(data)
                except h11.RemoteProtocolError as e:
                    raise _BadRequest(e.error_status_hint, f"bad request: {e}") from None
                continue
            if isinstance(event, h11.Request):
                head = event
                length = dict(event.headers).get(b"content-length")
                if length is not None and length.isdigit() and int(length) > self.max_body:
                    raise _BadRequest(413, f"request body larger than {self.max_body} bytes")
            elif isinstance(event, h11.Data):
                body += event.data
                if len(body) > self.max_body:
                    raise _BadRequest(413, f"request body larger than {self.max_body} bytes")
            elif isinstance(event, h11.EndOfMessage):
                assert head is not None
                return _make_request(head, bytes(body), remote, tls)
            elif isinstance(event, h11.ConnectionClosed) or event is h11.PAUSED:
                return None

    async def _handle(self, req: Request) -> Response:
        try:
            return await self.handler(req)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("console: %s %s failed", req.method, req.path)
            return Response(500, b"internal error; see the console's log\n")

    async def _write(self, writer: asyncio.StreamWriter, data: bytes | None) -> bool:
        if not data:
            return True
        writer.write(data)
        try:
            async with asyncio.timeout(self.write_timeout):
                await writer.drain()
        except (TimeoutError, ConnectionError):
            return False
        return True

    async def _send(self, conn: h11.Connection, writer: asyncio.StreamWriter, resp: Response, req: Request) -> bool:
        headers = [("server", SERVER), ("content-type", resp.content_type), *resp.headers]
        if resp.stream is None:
            headers.append(("content-length", str(len(resp.body))))
        head = conn.send(h11.Response(status_code=resp.status, headers=headers))
        if resp.stream is None:
            body = resp.body if req.method != "HEAD" else b""
            return await self._write(writer, b"".join(x or b"" for x in (head, conn.send(h11.Data(data=body)) if body else b"",
                                                                          conn.send(h11.EndOfMessage()))))
        if not await self._write(writer, head):
            return False
        try:
            async for chunk in resp.stream:
                if not await self._write(writer, conn.send(h11.Data(data=chunk))):
                    return False
        finally:
            aclose = getattr(resp.stream, "aclose", None)
            if aclose is not None:
                with contextlib.suppress(Exception):
                    await aclose()
        return await self._write(writer, conn.send(h11.EndOfMessage()))

    async def _send_error(self, conn: h11.Connection, writer: asyncio.StreamWriter, status: int, message: str) -> None:
        if conn.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
            return
        body = (message + "\n").encode()
        try:
            data = conn.send(h11.Response(status_code=status, headers=[("server", SERVER), ("content-type", "text/plain; charset=utf-8"),
                                                                       ("content-length", str(len(body))), ("connection", "close")]))
            data = (data or b"") + (conn.send(h11.Data(data=body)) or b"") + (conn.send(h11.EndOfMessage()) or b"")
        except h11.LocalProtocolError:
            return
        await self._write(writer, data)


def _make_request(head: h11.Request, body: bytes, remote: str, tls: bool) -> Request:
    target = head.target.decode("latin-1")
    parts = urllib.parse.urlsplit(target)
    headers: dict[str, str] = {}
    for name, value in head.headers:
        headers.setdefault(name.decode("latin-1").lower(), value.decode("latin-1"))
    query = dict(urllib.parse.parse_qsl(parts.query, keep_blank_values=True))
    return Request(head.method.decode("ascii", "replace").upper(), parts.path or "/", query, headers, body, remote, tls)
