"""The policy's own settings: every timing and threshold a decision needs.

The daemon's configuration (``daemon/config.py``) has the same names in the
same sections; :meth:`Settings.from_sections` takes those section objects (or
anything with the same attributes) so that the policy never imports the
daemon.

Invariants:
- Settings are immutable plain values; no defaults hide here that differ
  from ``daemon/config.py`` (the defaults below are the same numbers).
"""

from __future__ import annotations

import dataclasses
from typing import Protocol


class _Cluster(Protocol):
    @property
    def node(self) -> str: ...
    @property
    def peer(self) -> str: ...
    @property
    def preferred_node(self) -> str | None: ...


class _Heartbeat(Protocol):
    @property
    def interval(self) -> float: ...
    @property
    def timeout(self) -> float: ...
    @property
    def silent_peer_grace(self) -> float: ...


class _Gateway(Protocol):
    @property
    def dampen(self) -> float: ...


class _Fencing(Protocol):
    @property
    def priority_delay(self) -> float: ...
    @property
    def random_delay(self) -> float: ...
    @property
    def retry_backoff(self) -> float: ...
    @property
    def retry_backoff_max(self) -> float: ...


class _Policy(Protocol):
    @property
    def stall_threshold(self) -> float: ...
    @property
    def stickiness(self) -> bool: ...
    @property
    def migration_threshold(self) -> int: ...
    @property
    def failure_timeout(self) -> float: ...


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class Settings:
    node: str
    peer: str
    preferred_node: str | None = None
    heartbeat_interval: float = 0.1
    heartbeat_timeout: float = 1.0
    silent_peer_grace: float = 10.0
    gateway_dampen: float = 5.0
    priority_delay: float = 15.0
    random_delay: float = 2.0
    retry_backoff: float = 2.0
    retry_backoff_max: float = 60.0
    stall_threshold: float = 0.5
    stickiness: bool = True
    migration_threshold: int = 3
    failure_timeout: float = 600.0
    # DESIGN 4.4: with a hardware watchdog configured, an isolated active stops feeding it (self-fence).
    self_fence_when_isolated: bool = False

    @classmethod
    def from_sections(cls, *, cluster: _Cluster, heartbeat: _Heartbeat, gateway: _Gateway,
                      fencing: _Fencing, policy: _Policy, watchdog_enabled: bool = False) -> Settings:
        """Build from the daemon's ``ClusterConfig``, ``HeartbeatConfig``, ``GatewayConfig``,
        ``FencingConfig`` and ``PolicyConfig`` (or any objects with those attributes)."""
        return cls(
            node=cluster.node, peer=cluster.peer, preferred_node=cluster.preferred_node,
            heartbeat_interval=heartbeat.interval, heartbeat_timeout=heartbeat.timeout,
            silent_peer_grace=heartbeat.silent_peer_grace,
            gateway_dampen=gateway.dampen,
            priority_delay=fencing.priority_delay, random_delay=fencing.random_delay,
            retry_backoff=fencing.retry_backoff, retry_backoff_max=fencing.retry_backoff_max,
            stall_threshold=policy.stall_threshold, stickiness=policy.stickiness,
            migration_threshold=policy.migration_threshold, failure_timeout=policy.failure_timeout,
            self_fence_when_isolated=watchdog_enabled,
        )

    def retry_wait(self, failures: int) -> float:
        """Backoff before the next fence attempt after ``failures`` failed ones."""
        if failures <= 0:
            return 0.0
        return float(min(self.retry_backoff * 2 ** min(failures - 1, 30), self.retry_backoff_max))
