"""The metrics endpoint on ``metrics.listen``: prometheus-client's HTTP server in its own thread.

A scrape runs in the server's thread. It asks the event loop for a fresh
status document (the coroutine ``build``: ``status.document`` plus the
decision counts, built on the loop exactly as for ``clevervm status``) and
waits at most ``FRESH_TIMEOUT`` seconds. When the loop does not answer in
time (stalled, overloaded) the previous document is served and
``clever_status_age_seconds`` says how old it is. So the values are those of
the scrape's moment, the loop never waits for a scrape, and a scrape never
holds the loop longer than building one status document. Concurrent scrapes
share one build, and scrapes less than ``MIN_INTERVAL`` apart share one
document, so a flood of requests cannot load the loop.

Invariants:
- The only things the HTTP thread touches are the last document (a dict
  replaced whole, under a lock, never mutated afterwards) and the
  thread-safe prometheus-client instruments; it never reads the loop's
  objects directly.
- A scrape on the loop's own thread (which could never be answered) serves
  the previous document at once instead of waiting.
- An address that cannot be bound is logged as an error and the daemon runs
  on without metrics; stopping shuts the server down and closes its socket.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import Metric
from prometheus_client.registry import Collector

from . import logsetup
from .metrics import families
from .schema import parse_host_port

log = logsetup.get("daemon.metrics")

FRESH_TIMEOUT = 2.0
MIN_INTERVAL = 0.25  # scrapes closer together than this share one document
STOP_TIMEOUT = 5.0

Doc = dict[str, Any]


class StatusSource:
    """Status documents for the HTTP thread, built on the event loop ``loop``."""

    def __init__(self, loop: asyncio.AbstractEventLoop, build: Callable[[], Awaitable[Doc]], timeout: float = FRESH_TIMEOUT,
                 min_interval: float = MIN_INTERVAL) -> None:
        self.loop = loop
        self.build = build
        self.timeout = timeout
        self.min_interval = min_interval
        self.failures = 0
        self._lock = threading.Lock()
        self._last: tuple[Doc, float] | None = None  # (document, monotonic time it was built)
        self._inflight: concurrent.futures.Future[Doc] | None = None
        self._loop_thread = threading.get_ident()  # made on the loop's thread (the runtime builds it there)

    async def _build(self) -> Doc:
        return await self.build()

    def _request(self) -> concurrent.futures.Future[Doc] | None:
        """The build to wait for: the one in flight (concurrent scrapes share it), a new one, or none
        when the last document is younger than ``min_interval`` (a flood of scrapes cannot load the loop)."""
        with self._lock:
            if self._inflight is not None and not self._inflight.done():
                return self._inflight
            if self._last is not None and time.monotonic() - self._last[1] < self.min_interval:
                return None
            try:
                self._inflight = asyncio.run_coroutine_threadsafe(self._build(), self.loop)
            except RuntimeError:  # the loop is closed: the daemon is stopping
                return None
            return self._inflight

    def read(self) -> tuple[Doc | None, float]:
        """The freshest document there is, and its age in seconds."""
        fut = self._request() if threading.get_ident() != self._loop_thread else None
        if fut is not None:
            try:
                doc = fut.result(self.timeout)
            except Exception as e:  # noqa: BLE001 - a timeout or a failed build: serve the previous one
                fut.cancel()
                with self._lock:
                    self.failures += 1
                log.warning("metrics scrape: no fresh status document (%s); serving the previous one", str(e) or type(e).__name__)
            else:
                with self._lock:
                    if self._last is None or self._last[0] is not doc:
                        self._last = (doc, time.monotonic())
        with self._lock:
            last = self._last
        if last is None:
            return None, 0.0
        return last[0], round(time.monotonic() - last[1], 3)


class StatusCollector(Collector):
    """Reads one status document per scrape and exports it (:func:`metrics.families`)."""

    def __init__(self, source: StatusSource) -> None:
        self.source = source

    def describe(self) -> list[Metric]:
        return []  # the names depend on the document; no describe-time scrape of the loop

    def collect(self) -> Iterator[Metric]:
        doc, age = self.source.read()
        if doc is not None:
            yield from families(doc, age)


class Endpoint:
    """The HTTP server (``start``/``stop``); ``address`` is where it listens once started."""

    def __init__(self, listen: str, registry: CollectorRegistry) -> None:
        self.listen = listen
        self.registry = registry
        self.error: str | None = None
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def address(self) -> tuple[str, int] | None:
        if self._server is None:
            return None
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    def start(self) -> bool:
        if not self.listen:
            log.info("metrics disabled (metrics.listen is empty)")
            return False
        try:
            host, port = parse_host_port(self.listen)
            self._server, self._thread = start_http_server(port, addr=host, registry=self.registry)
        except (OSError, ValueError) as e:
            self.error = f"cannot listen on {self.listen}: {e}"
            log.error("metrics endpoint not started: %s; the daemon runs on without metrics (fix metrics.listen and restart)",
                      self.error, extra={"fields": {"CLEVER_REASON": "metrics_listen_failed"}})
            return False
        log.info("metrics on http://%s/metrics", self.listen)
        return True

    def stop(self) -> None:
        """Blocking (up to the server's poll interval): run it in a thread from the loop."""
        server, thread = self._server, self._thread
        self._server = self._thread = None
        if server is not None:
            server.shutdown()
            server.server_close()
        if thread is not None:
            thread.join(STOP_TIMEOUT)
