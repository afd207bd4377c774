"""Gateway reachability score: ICMP echo to ``gateway.targets`` (pingd's job).

Every ``gateway.interval`` each target gets up to ``attempts`` echo requests,
one after the other, each waiting ``timeout`` for its reply; the first reply
makes the target reachable for that round (a lossy path is not a dead one).
All targets are probed concurrently. The score is reachable targets x
``multiplier``.

Invariants:
- "No data yet" (no round finished) is ``score is None``; it is never
  reported as 0 reachable.
- A target that cannot be resolved, or whose address cannot be sent to (no
  route for its family, ENETUNREACH), is reported with its error and counts as
  unreachable; it never stops the pinger.
- Raw ICMP sockets are used as root, unprivileged ICMP datagram sockets
  otherwise; if neither can be opened, :class:`GatewayError` names the
  ``net.ipv4.ping_group_range`` sysctl that allows the second kind.
- :meth:`GatewayPinger.fresh_probe` (the fence gate, DESIGN S7) probes now and
  is never dampened; there "no data" cannot happen: an error counts as
  unreachable.
- ``score_since`` is when the score took its current value (monotonic), so
  the policy can apply ``dampen``; ``stable_score`` is the newest score that
  has held for at least ``dampen``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import ipaddress
import os
import time
from collections.abc import Callable, Sequence

import icmplib
from icmplib.exceptions import ICMPLibError, NameLookupError, SocketPermissionError, TimeoutExceeded

from . import logsetup
from .config import GatewayConfig

log = logsetup.get("daemon.gateway")

SYSCTL = "net.ipv4.ping_group_range"


class GatewayError(Exception):
    """ICMP cannot be used at all on this host (an operator must fix it)."""


@dataclasses.dataclass(frozen=True)
class TargetResult:
    """One target in one round."""

    target: str
    address: str | None
    sent: int
    received: int
    rtt_ms: float | None  # mean over the replies of this round
    error: str | None = None

    @property
    def reachable(self) -> bool:
        return self.received > 0


@dataclasses.dataclass(frozen=True)
class GatewayProbe:
    """The outcome of one round over every target."""

    finished_at: float  # monotonic
    targets: tuple[TargetResult, ...]
    multiplier: int

    @property
    def reachable(self) -> int:
        return sum(1 for t in self.targets if t.reachable)

    @property
    def score(self) -> int:
        return self.reachable * self.multiplier


@dataclasses.dataclass(frozen=True)
class GatewayFacts:
    """What the policy reads. ``score is None`` means no round has finished yet."""

    score: int | None
    max_score: int
    reachable: int | None
    observed_at: float | None
    score_since: float | None
    stable_score: int | None
    rounds: int
    targets: tuple[TargetResult, ...]

    @property
    def no_data(self) -> bool:
        return self.score is None


Clock = Callable[[], float]


def choose_privileged(euid: int | None = None) -> bool:
    """Raw sockets as root, else unprivileged; raise GatewayError if neither opens."""
    euid = os.geteuid() if euid is None else euid
    order = [True, False] if euid == 0 else [False]
    errors = []
    for privileged in order:
        try:
            s = icmplib.ICMPv4Socket(privileged=privileged)
        except SocketPermissionError as e:
            errors.append(f"{'raw' if privileged else 'unprivileged'} ICMP socket: {e}")
            continue
        except ICMPLibError as e:
            errors.append(f"{'raw' if privileged else 'unprivileged'} ICMP socket: {e}")
            continue
        s.close()
        return privileged
    gid = os.getegid()
    raise GatewayError(
        f"cannot open an ICMP socket ({'; '.join(errors)}). Run as root, or allow unprivileged ping for "
        f"group {gid} with: sysctl -w {SYSCTL}=\"0 {max(gid, 1)}\" (and persist it in /etc/sysctl.d/)"
    )


async def probe_target(target: str, attempts: int, timeout: float, privileged: bool) -> TargetResult:
    """Up to ``attempts`` echo requests; stop at the first reply."""
    try:
        address = target
        try:
            ipaddress.ip_address(target)
        except ValueError:
            address = (await asyncio.wait_for(icmplib.async_resolve(target), timeout))[0]
    except (NameLookupError, TimeoutError, OSError) as e:
        return TargetResult(target, None, 0, 0, None, f"cannot resolve: {e or 'timed out'}")
    cls = icmplib.ICMPv6Socket if ":" in address else icmplib.ICMPv4Socket
    sent = received = 0
    rtts: list[float] = []
    error: str | None = None
    ident = icmplib.utils.unique_identifier()
    try:
        sock = icmplib.AsyncSocket(cls(privileged=privileged))
    except ICMPLibError as e:
        return TargetResult(target, address, 0, 0, None, f"cannot open an ICMP socket: {e}")
    with sock:
        for seq in range(attempts):
            request = icmplib.ICMPRequest(destination=address, id=ident, sequence=seq)
            try:
                sock.send(request)
            except ICMPLibError as e:
                # ENETUNREACH and friends: nothing left the host.
                error = f"cannot send: {e}"
                continue
            sent += 1
            try:
                reply = await sock.receive(request, timeout)
                reply.raise_for_status()
            except TimeoutExceeded:
                continue
            except ICMPLibError as e:
                error = f"{type(e).__name__}: {e}"
                continue
            received += 1
            rtts.append((reply.time - request.time) * 1000.0)
            error = None
            break
    rtt = sum(rtts) / len(rtts) if rtts else None
    return TargetResult(target, address, sent, received, rtt, error)


class GatewayPinger:
    """Runs the rounds and keeps the latest facts. ``run()`` is the observer task."""

    def __init__(self, cfg: GatewayConfig, *, clock: Clock = time.monotonic, privileged: bool | None = None,
                 on_update: Callable[[GatewayFacts], None] | None = None) -> None:
        self.cfg = cfg
        self.clock = clock
        self.privileged = privileged
        self.on_update = on_update
        self._last: GatewayProbe | None = None
        self._rounds = 0
        self._score_since: float | None = None
        # (score, since) of every distinct value seen, newest last: enough to find the stable one.
        self._history: list[tuple[int, float]] = []

    def reconfigure(self, cfg: GatewayConfig) -> None:
        self.cfg = cfg

    async def probe(self, targets: Sequence[str] | None = None) -> GatewayProbe:
        if self.privileged is None:
            self.privileged = choose_privileged()
        cfg = self.cfg
        names = tuple(targets if targets is not None else cfg.targets)
        results = await asyncio.gather(*(probe_target(t, cfg.attempts, cfg.timeout, self.privileged) for t in names))
        return GatewayProbe(self.clock(), tuple(results), cfg.multiplier)

    async def fresh_probe(self) -> GatewayProbe:
        """A round taken now for the fence gate (S7): not dampened, not cached.

        Raises GatewayError only when ICMP cannot be used at all; the caller
        then treats the gateway as unreachable.
        """
        p = await self.probe()
        log.info("fresh gateway probe for the fence gate: %d of %d targets reachable (%s)",
                 p.reachable, len(p.targets), _describe(p.targets))
        return p

    async def gate_open(self) -> bool:
        """The fence gate (S7) as the fencing coordinator's ``gateway_gate``: any target reachable now.

        ICMP unusable counts as unreachable: an isolated-looking node does not shoot.
        """
        try:
            return (await self.fresh_probe()).reachable > 0
        except GatewayError as e:
            log.error("fence gate closed: %s", e)
            return False

    def record(self, p: GatewayProbe) -> None:
        prev = self._last.score if self._last is not None else None
        self._last = p
        self._rounds += 1
        if prev != p.score:
            self._score_since = p.finished_at
            self._history.append((p.score, p.finished_at))
            del self._history[:-32]
            if prev is not None:
                log.info("gateway score %s -> %s (%s)", prev, p.score, _describe(p.targets))
        if self.on_update is not None:
            self.on_update(self.facts())

    def facts(self) -> GatewayFacts:
        cfg = self.cfg
        max_score = len(cfg.targets) * cfg.multiplier
        p = self._last
        if p is None:
            return GatewayFacts(None, max_score, None, None, None, None, 0, ())
        return GatewayFacts(p.score, max_score, p.reachable, p.finished_at, self._score_since,
                            self._stable(self.clock()), self._rounds, p.targets)

    def _stable(self, now: float) -> int | None:
        # A value is stable once the next value (or now) came at least `dampen` after it.
        h = self._history
        for i in range(len(h) - 1, -1, -1):
            end = h[i + 1][1] if i + 1 < len(h) else now
            if end - h[i][1] >= self.cfg.dampen:
                return h[i][0]
        return None

    async def run(self) -> None:
        """Probe every ``interval`` for ever (cancel to stop)."""
        loop = asyncio.get_running_loop()
        while True:
            started = loop.time()
            try:
                self.record(await self.probe())
            except GatewayError as e:
                log.error("gateway pinger cannot work: %s", e, extra={"fields": {"CLEVER_REASON": "gateway_icmp_unavailable"}})
                await asyncio.sleep(max(self.cfg.interval, 5.0))
                continue
            with contextlib.suppress(ValueError):
                await asyncio.sleep(max(0.0, self.cfg.interval - (loop.time() - started)))


def _describe(targets: Sequence[TargetResult]) -> str:
    parts = []
    for t in targets:
        if t.reachable:
            parts.append(f"{t.target} ok {t.rtt_ms:.2f} ms" if t.rtt_ms is not None else f"{t.target} ok")
        else:
            parts.append(f"{t.target} unreachable" + (f" ({t.error})" if t.error else f" ({t.sent} sent, no reply)"))
    return ", ".join(parts)
