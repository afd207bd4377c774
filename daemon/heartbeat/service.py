"""The heartbeat service: UDP endpoints, one sender task per link, the silence watch.

:meth:`HeartbeatService.open` establishes this node's identity (bumping the
persisted incarnation), loads the keys, the admin intent and the replay
floor; :meth:`start` binds one asyncio datagram endpoint per
``[[heartbeat.link]]`` on its local address and starts the tasks;
:meth:`stop` announces ``leaving`` (or ``restarting``) on every link and
closes everything.

Invariants:
- No threads; nothing here blocks the loop except the small fsynced writes
  of rare events (a new peer incarnation, an adopted intent record).
- A link whose local address is missing (or busy) at start is retried every
  :data:`BIND_RETRY` seconds and reported in ``status``; it never stops the
  daemon, and the other links work meanwhile.
- Senders keep their schedule without catching up after a stall (one
  datagram, then the normal cadence).
- All periodic work (every link's sender, the silence watch, and the
  runtime's decision tick) wakes on one grid of the loop clock, multiples of
  the period: one wakeup serves them all. On a virtual machine a wakeup
  costs more than the work (about 0.13 ms each here), so this halves the
  daemon's CPU; the price is that both links send at the same instant.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import math
import socket
import time
from collections.abc import Callable
from typing import Any

from .. import logsetup
from ..config import Config, LinkConfig
from .facts import Event, PeerView
from .identity import IdentityError, establish
from .intent import IntentError, IntentStore
from .keys import KeyProblem, load_keyring
from .model import AdminIntent, Announce, NodeReport
from .replay import ReplayGuard
from .requests import RequestChannel
from .session import Session
from .wire import MIN_VERSION, PROTOCOL_VERSION

log = logsetup.get("daemon.heartbeat")

BIND_RETRY = 1.0
ANNOUNCE_COPIES = 3  # a clean stop is announced this many times per link (UDP may lose one)
ANNOUNCE_SPACING = 0.01
STATUS_EVENTS = 30
DSCP_CS6 = 0xC0  # network control: queued ahead of bulk traffic (DRBD resync) on the same link


class HeartbeatError(Exception):
    """The service cannot start; the message says why and what to do."""


class _LinkIO(asyncio.DatagramProtocol):
    def __init__(self, service: HeartbeatService, index: int) -> None:
        self.service = service
        self.index = index

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.service._received(self.index, data)

    def error_received(self, exc: Exception) -> None:
        self.service._send_failed(self.index, exc)


@dataclasses.dataclass
class _Link:
    index: int
    cfg: LinkConfig
    port: int
    transport: asyncio.DatagramTransport | None = None
    bind_error: str | None = None
    send_errors: int = 0
    last_send_error: str | None = None
    sent: int = 0


class HeartbeatService:
    def __init__(self, cfg: Config, session: Session) -> None:
        self.cfg = cfg
        self.session = session
        self.links = [_Link(i, ln, ln.port or cfg.heartbeat.port) for i, ln in enumerate(cfg.heartbeat.link)]
        self.changed = asyncio.Event()  # set on every event; the runtime clears it
        self._tasks: list[asyncio.Task[None]] = []
        self._listeners: list[Callable[[Event], None]] = []
        self._stopped = False
        self._send_pending = False
        self.send_bugs = 0
        self._last_bug = ""
        session.kick = self.send_now
        session.on_event = self._event

    @classmethod
    def open(cls, cfg: Config, report: Callable[[], NodeReport], *, max_version: int = PROTOCOL_VERSION) -> HeartbeatService:
        """Identity, keys, intent and replay state; raises HeartbeatError with the reason."""
        c = cfg.cluster
        try:
            ident = establish(cfg)
            keys = load_keyring(c)
            intent = IntentStore(c.state_dir, c.node)
            intent.load()
            replay = ReplayGuard(c.state_dir, c.peer)
        except (IdentityError, KeyProblem, IntentError, ValueError) as e:
            raise HeartbeatError(str(e)) from None
        except OSError as e:
            raise HeartbeatError(f"cannot use {c.state_dir}: {e.strerror or e}") from None
        if ident.machine_id is None:
            log.warning("no SMBIOS system UUID on this machine and cluster.machine_id is unset: the peer cannot "
                        "check which machine a fence device powers")
        log.info("incarnation %d (boot %s, machine %s), key %s%s, protocol %d (reads %d..%d)",
                 ident.incarnation, ident.boot_id, ident.machine_id or "unknown", keys.current.id,
                 f" + next key {keys.next.id}" if keys.next else "", max_version, MIN_VERSION, max_version)
        return cls(cfg, Session(cfg, ident, keys, intent, replay, report, max_version=max_version))

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        for link in self.links:
            self._spawn(self._bind(link), f"heartbeat bind {link.cfg.name}")
            self._spawn(self._sender(link), f"heartbeat send {link.cfg.name}")
        self._spawn(self._watch(), "heartbeat watch")

    def _spawn(self, coro: Any, name: str) -> None:
        self._tasks.append(asyncio.get_running_loop().create_task(coro, name=name))

    async def stop(self, announce: Announce | None = None) -> None:
        """Stop sending; announce ``announce`` on every bound link first; close the sockets."""
        if self._stopped:
            return
        self._stopped = True
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if announce is not None:
            for copy in range(ANNOUNCE_COPIES):
                now = asyncio.get_running_loop().time()
                for link in self.links:
                    self._send(link, now, announce)
                if copy + 1 < ANNOUNCE_COPIES:
                    await asyncio.sleep(ANNOUNCE_SPACING)
            names = [ln.cfg.name for ln in self.links if ln.transport is not None]
            log.info("announced %s to %s on %s", announce.kind, self.cfg.cluster.peer, ", ".join(names) or "no link")
        await self.session.requests.close()
        for link in self.links:
            if link.transport is not None:
                link.transport.close()
                link.transport = None

    def reload(self, cfg: Config) -> None:
        """New timings, keys and fingerprint. Raises KeyProblem (the old keys stay)."""
        keys = load_keyring(cfg.cluster)
        if keys.current.id != self.session.keys.current.id or (keys.next and keys.next.id) != (
                self.session.keys.next and self.session.keys.next.id):
            log.info("heartbeat keys: sending with %s%s", keys.current.id, f", also accepting {keys.next.id}" if keys.next else "")
        self.cfg = cfg
        self.session.reconfigure(cfg, keys)

    # ------------------------------------------------------------------ tasks

    async def _bind(self, link: _Link) -> None:
        loop = asyncio.get_running_loop()
        addr = str(link.cfg.local)
        while True:
            try:
                transport, _ = await loop.create_datagram_endpoint(
                    lambda: _LinkIO(self, link.index), local_addr=(addr, link.port),
                    family=socket.AF_INET6 if link.cfg.local.version == 6 else socket.AF_INET)
            except OSError as e:
                problem = f"cannot bind {addr} port {link.port}: {e.strerror or e}"
                if problem != link.bind_error:
                    hint = " (address not configured yet; retrying)" if e.errno == errno.EADDRNOTAVAIL else "; retrying"
                    log.warning("link %s: %s%s", link.cfg.name, problem, hint,
                                extra={"fields": {"CLEVER_REASON": "link_bind_failed"}})
                link.bind_error = problem
                await asyncio.sleep(BIND_RETRY)
                continue
            _set_dscp(transport, link.cfg.local.version)
            link.transport = transport
            if link.bind_error is not None:
                log.info("link %s: bound %s port %d", link.cfg.name, addr, link.port)
            link.bind_error = None
            return

    async def _sender(self, link: _Link) -> None:
        loop = asyncio.get_running_loop()
        self._send(link, loop.time())
        while True:
            # The next grid point: after a stall, one datagram and the normal cadence, no catch-up burst.
            await sleep_until(next_grid(loop.time(), self.cfg.heartbeat.interval))
            self._send(link, loop.time())

    async def _watch(self) -> None:
        """Poll for silence at the next deadline or grid point, whichever is first; notice stalls."""
        loop = asyncio.get_running_loop()
        while True:
            now = loop.time()
            wake = next_grid(now, self.cfg.heartbeat.interval)
            deadline = self.session.next_deadline()
            if deadline is not None:
                wake = max(now, min(wake, deadline))
            await sleep_until(wake)
            now = loop.time()
            late = now - wake
            if late > self.cfg.policy.stall_threshold:
                self.session.note_stall(now, late)
            self.session.poll(now)

    # ------------------------------------------------------------------ I/O

    def _send(self, link: _Link, now: float, announce: Announce | None = None) -> None:
        if link.transport is None or link.transport.is_closing():
            return
        try:
            data = self.session.datagram(link.index, now, announce)
        except Exception as e:  # a bug in the runtime's report, or a report too large, must not end the sender
            # Nothing is sent rather than a made-up report: to the peer this looks like loss, and a
            # lasting bug makes this node lost (and fenced) instead of misinformed.
            self.send_bugs += 1
            if repr(e) != self._last_bug:
                self._last_bug = repr(e)
                log.exception("cannot build a heartbeat for %s; not sending it", link.cfg.name)
            return
        link.transport.sendto(data, (str(link.cfg.peer), link.port))
        link.sent += 1

    def send_now(self) -> None:
        """Send on every link soon (a new request or answer should not wait for the interval).

        Deferred to the next loop iteration, so a call from inside the receive path never
        re-enters the session, and several calls in one iteration send once.
        """
        if self._stopped or self._send_pending:
            return
        self._send_pending = True
        asyncio.get_running_loop().call_soon(self._send_all)

    def _send_all(self) -> None:
        self._send_pending = False
        if self._stopped:
            return
        now = asyncio.get_running_loop().time()
        for link in self.links:
            self._send(link, now)

    def _received(self, index: int, data: bytes) -> None:
        try:
            self.session.receive(index, data, asyncio.get_running_loop().time())
        except Exception:
            log.exception("bug while handling a heartbeat datagram on %s", self.links[index].cfg.name)

    def _send_failed(self, index: int, exc: Exception) -> None:
        link = self.links[index]
        link.send_errors += 1
        text = str(exc)
        if text != link.last_send_error:
            log.warning("link %s: sending to %s failed: %s", link.cfg.name, link.cfg.peer, text)
            link.last_send_error = text

    def _event(self, ev: Event) -> None:
        self.changed.set()
        for fn in self._listeners:
            fn(ev)

    def subscribe(self, fn: Callable[[Event], None]) -> None:
        self._listeners.append(fn)

    # ------------------------------------------------------------------ API for the runtime

    @property
    def requests(self) -> RequestChannel:
        return self.session.requests

    @property
    def incarnation(self) -> int:
        return self.session.ident.incarnation

    def view(self) -> PeerView:
        return self.session.view(asyncio.get_running_loop().time())

    def change_intent(self, edit: Callable[[AdminIntent], AdminIntent]) -> AdminIntent:
        """An operator's change: persisted, then replicated (sent at once). Raises OSError when it cannot be persisted."""
        rec = self.session.intent.change(edit, time.time())
        self.session.emit("intent_changed", asyncio.get_running_loop().time(),
                           f"admin intent version {rec.version}: {rec.describe()}; not yet acknowledged by the peer")
        self.send_now()
        return rec

    def status(self) -> dict[str, Any]:
        return status_dict(self)



def next_grid(now: float, period: float) -> float:
    """The first multiple of ``period`` after ``now`` (on the loop clock)."""
    return (math.floor(now / period) + 1) * period


async def sleep_until(when: float) -> None:
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[None] = loop.create_future()
    handle = loop.call_at(when, _wake, fut)
    try:
        await fut
    finally:
        handle.cancel()


def _wake(fut: asyncio.Future[None]) -> None:
    # The sleeper may have been cancelled in the very iteration its timer fired (a stop under load).
    if not fut.done():
        fut.set_result(None)


def _set_dscp(transport: asyncio.DatagramTransport, version: int) -> None:
    sock = transport.get_extra_info("socket")
    if sock is None:
        return
    with contextlib.suppress(OSError):
        if version == 6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_TCLASS, DSCP_CS6)
        else:
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_TOS, DSCP_CS6)


def _r(x: float | None, nd: int = 3) -> float | None:
    return None if x is None else round(x, nd)


def status_dict(svc: HeartbeatService) -> dict[str, Any]:
    """The ``peer`` part of ``clevervm status --json``."""
    s = svc.session
    v = svc.view()
    keys = s.keys
    key_ids = {"key_file": keys.current.id, "next_key_file": keys.next.id if keys.next else None}
    links = []
    for link, lv in zip(svc.links, v.links, strict=True):
        links.append({
            "name": lv.name, "local": str(link.cfg.local), "peer": str(link.cfg.peer), "port": link.port,
            "bound": link.transport is not None, "bind_error": link.bind_error,
            "sent": link.sent, "send_errors": link.send_errors, "last_send_error": link.last_send_error,
            "up": lv.up, "last_heard_mono": lv.last_heard, "silent_for": _r(lv.silent_for),
            "loss_in": _r(lv.loss_in), "loss_out": _r(lv.loss_out),
            "rtt_ms": _r(None if lv.rtt is None else lv.rtt * 1000), "rtt_smoothed_ms": _r(None if lv.rtt_smoothed is None else lv.rtt_smoothed * 1000),
            "key": lv.key, "key_id": key_ids.get(lv.key) if lv.key else None,
            "peer_link": s.links[link.index].stream,  # the peer's link index heard here; should equal ours
        })
    peer_key = next((lv.key for lv in v.links if lv.key), None)
    return {
        "name": v.name,
        "state": v.state.value,
        "incarnation": v.incarnation,
        "boot_id": v.boot_id,
        "machine_id": v.machine_id,
        "last_heard_mono": v.last_heard,
        "silent_for": _r(v.silent_for),
        "announce": dataclasses.asdict(v.announce) if v.announce else None,
        "restart_expected_in": _r(None if v.restart_expected_by is None else v.restart_expected_by - asyncio.get_running_loop().time()),
        "protocol": {"peer_sends": v.protocol, "peer_reads_up_to": v.peer_max_version, "sending": v.sending_version,
                     "this_node_reads": [MIN_VERSION, s.max_version]},
        "keys": {"sending": keys.current.id, **key_ids, "peer_uses": peer_key, "peer_uses_id": key_ids.get(peer_key) if peer_key else None},
        "settings": {"this_node": v.settings_fingerprint, "peer": v.peer_settings_fingerprint, "mismatch": v.settings_mismatch},
        "intent": {"record": dataclasses.asdict(v.intent), "summary": v.intent.describe(), "acknowledged": v.intent_acknowledged,
                   "superseded": dataclasses.asdict(v.intent_superseded) if v.intent_superseded else None},
        "report": dataclasses.asdict(v.report) if v.report else None,
        "report_age": _r(v.report_age),
        "links": links,
        "drops": v.drops,
        "unconfirmed": v.unconfirmed,
        "overtaken": v.overtaken,
        "restarts": v.restarts,
        "longest_silence": _r(v.longest_silence),
        "requests": {"outstanding": s.requests.outstanding(), "served": s.requests.served},
        "event_counts": dict(s.event_counts),
        "events": [dataclasses.asdict(e) for e in list(s.events)[-STATUS_EVENTS:]],
        "self": {"incarnation": s.ident.incarnation, "machine_id": s.ident.machine_id, "boot_id": s.ident.boot_id},
    }
