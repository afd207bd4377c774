"""Replay protection for the peer's datagrams.

Rules (DESIGN section 5): the peer's incarnation never goes backwards; within
one incarnation, the sequence number of each stream (the sender's link
index) strictly increases. A datagram that breaks either rule (a replay, or
an old datagram overtaken by a newer one) is dropped.

Invariants:
- :meth:`ReplayGuard.admit` changes state only for a datagram it accepts,
  so a rejected datagram can never move the window.
- The highest peer incarnation seen is persisted (fsynced) in
  ``state_dir`` when it is first accepted, so a daemon restart does not
  re-open the door to datagrams recorded from an earlier incarnation.
  When that write fails (a full or read-only disk) the datagram is accepted
  all the same and :attr:`ReplayGuard.unpersisted` says why: in this run
  the floor in memory guards, and after a restart recordings fail the
  freshness proof anyway, whereas dropping the datagrams would make a live
  peer lost (and fenced). The write is tried again at the next incarnation.
"""

from __future__ import annotations

import enum
import json
from pathlib import Path

from ..persist import atomic_write_json, ensure_dir
from .wire import Envelope

PEER_FILE = "peer-incarnation.json"


class Admit(enum.Enum):
    FIRST = "first"  # first datagram heard since this daemon started
    SAME = "same"  # same incarnation, fresh sequence
    RESTARTED = "restarted"  # a higher incarnation: the peer's daemon restarted


class ReplayGuard:
    def __init__(self, state_dir: Path | None, peer: str) -> None:
        self.path = state_dir / PEER_FILE if state_dir is not None else None
        self.peer = peer
        self.incarnation: int | None = None  # of the peer, as last accepted
        self.floor = 0  # persisted: never accept an incarnation below this
        self._last: dict[int, int] = {}  # stream -> last accepted sequence
        self.unpersisted: OSError | None = None  # why the last new incarnation is not on disk
        if self.path is not None:
            self.floor = self._load(self.path, peer)

    @staticmethod
    def _load(path: Path, peer: str) -> int:
        try:
            raw = json.loads(path.read_bytes())
        except FileNotFoundError:
            return 0
        except (OSError, ValueError) as e:
            raise ValueError(f"{path} is unreadable ({e}); remove it to accept any incarnation of {peer} again") from None
        if not isinstance(raw, dict):
            raise ValueError(f"{path} is unreadable (not a JSON object); remove it to accept any incarnation of {peer} again")
        if raw.get("peer") != peer:
            return 0  # a file about another peer (renamed nodes) protects nothing here
        inc = raw.get("incarnation")
        if not isinstance(inc, int) or isinstance(inc, bool) or inc < 0:
            raise ValueError(f"{path} is unreadable (incarnation is {inc!r}); remove it to accept any incarnation of {peer} again")
        return inc

    def admit(self, env: Envelope) -> Admit | None:
        """Accept (and remember) a fresh datagram; None for a replayed or reordered one."""
        if self.incarnation is None or env.incarnation > self.incarnation:
            if env.incarnation < self.floor:
                return None
            verdict = Admit.FIRST if self.incarnation is None else Admit.RESTARTED
            self.unpersisted = None
            if env.incarnation > self.floor and self.path is not None:
                try:
                    ensure_dir(self.path.parent)
                    atomic_write_json(self.path, {"peer": self.peer, "incarnation": env.incarnation})
                    self.floor = env.incarnation
                except OSError as e:
                    self.unpersisted = e
            self.incarnation = env.incarnation
            self._last = {env.stream: env.sequence}
            return verdict
        if env.incarnation < self.incarnation:
            return None
        last = self._last.get(env.stream)
        if last is not None and env.sequence <= last:
            return None
        self._last[env.stream] = env.sequence
        return Admit.SAME
