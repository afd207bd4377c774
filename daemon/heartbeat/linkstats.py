"""Per-link facts: last heard, loss ratio over a sliding window, round-trip time.

Loss is counted from the gaps in the peer's sequence numbers on the link
(each link carries one sender stream, numbered per datagram), plus the
datagrams that are overdue since the last one arrived, over
``heartbeat.loss_window``. RTT comes from the echo of our own send time:
``now - echo - hold`` on one clock, so the peer's clock never matters.

Invariants:
- Only datagrams the session accepted (authenticated, fresh) are recorded.
- ``loss()`` is None before anything was heard, 1.0 when nothing was heard
  for a whole window, and otherwise within [0, 1].
- An RTT sample outside [0, MAX_RTT] (an echo from an earlier run of this
  daemon, a peer bug) is ignored rather than trusted.
"""

from __future__ import annotations

import collections
import dataclasses

MAX_RTT = 10.0
_SMOOTHING = 1 / 8  # the classic TCP smoothed-RTT gain


@dataclasses.dataclass
class LinkStats:
    name: str
    index: int
    last_heard: float | None = None
    heard: int = 0
    rtt: float | None = None
    rtt_smoothed: float | None = None
    peer_rx_loss: float | None = None  # what the peer reports of our datagrams on this link
    key_name: str | None = None  # which key verified the last datagram
    up: bool = False  # heard within heartbeat.timeout
    stream: int | None = None  # the peer's link index heard on this link
    _window: collections.deque[tuple[float, int]] = dataclasses.field(default_factory=collections.deque)
    _echo: tuple[int, float] | None = None  # (peer's sent_us, when we received it)

    def reset_peer(self) -> None:
        """A new peer incarnation: its sequence numbers and send times start afresh."""
        self._window.clear()
        self._echo = None

    def record(self, now: float, stream: int, sequence: int) -> None:
        if stream != self.stream:
            self._window.clear()
            self.stream = stream
        if self._window and sequence <= self._window[-1][1]:
            return  # a datagram that was overtaken; the replay guard normally drops these
        self._window.append((now, sequence))
        self.last_heard = now
        self.heard += 1

    def loss(self, now: float, interval: float, window: float) -> float | None:
        if self.last_heard is None:
            return None
        while self._window and self._window[0][0] < now - window:
            self._window.popleft()
        if not self._window:
            return 1.0
        first, last = self._window[0][1], self._window[-1][1]
        received = len(self._window)
        # One interval of slack before a datagram counts as overdue.
        overdue = max(0, int((now - self._window[-1][0]) / interval) - 1)
        expected = last - first + 1 + overdue
        return min(1.0, max(0.0, (expected - received) / expected))

    # ------------------------------------------------------------------ RTT

    def note_peer_sent(self, sent_us: int, now: float) -> None:
        if self._echo is None or sent_us > self._echo[0]:
            self._echo = (sent_us, now)

    def echo(self, now: float) -> tuple[int | None, int]:
        """(the peer's last send time, how long we held it) for our next datagram on this link."""
        if self._echo is None:
            return None, 0
        sent_us, at = self._echo
        return sent_us, max(0, int((now - at) * 1e6))

    def rtt_sample(self, now: float, echo_us: int | None, hold_us: int) -> None:
        if echo_us is None:
            return
        sample = now - echo_us / 1e6 - hold_us / 1e6
        if not 0.0 <= sample <= MAX_RTT:
            return
        self.rtt = sample
        s = self.rtt_smoothed
        self.rtt_smoothed = sample if s is None else s + _SMOOTHING * (sample - s)
