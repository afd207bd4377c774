"""Fixed parts of the simulated world: its timings, the policy settings it
runs with (realistic defaults and a fast variant for searches), the links,
and the records it keeps (link state, decision log lines).

Invariant: the fast variant keeps the ratios that matter (timeout >= 3 x
interval, priority delay > a device's fence time + detection) so that a
behaviour found with it is one the real timings have too.
"""

from __future__ import annotations

import dataclasses

from clever_cluster.policy import Phase

LINKS = ("bond0", "lan")      # bond0 also carries DRBD's replication


@dataclasses.dataclass(frozen=True)
class Timing:
    """Virtual durations of the world (the policy's own timings are in Settings)."""
    boot: float = 5.0
    daemon_restart: float = 3.0
    restart_announce: float = 30.0
    probe: float = 0.3
    gateway_interval: float = 1.0
    seq_step: float = 0.5
    ping_timeout: float = 2.0
    device: float = 2.0
    device_slow: float = 25.0
    device_timeout: float = 10.0
    power_on_after_fence: float = 3.0


DEFAULT_SETTINGS: dict[str, float] = dict(heartbeat_interval=0.1, heartbeat_timeout=1.0, silent_peer_grace=10.0, gateway_dampen=5.0,
                        priority_delay=15.0, random_delay=2.0, retry_backoff=2.0, retry_backoff_max=60.0,
                        stall_threshold=0.5, migration_threshold=3, failure_timeout=600.0)
FAST_SETTINGS: dict[str, float] = dict(heartbeat_interval=1.0, heartbeat_timeout=3.0, silent_peer_grace=6.0, gateway_dampen=3.0,
                     priority_delay=8.0, random_delay=2.0, retry_backoff=2.0, retry_backoff_max=8.0,
                     stall_threshold=1.5, migration_threshold=3, failure_timeout=600.0)
DEFAULT_TIMING = Timing()
FAST_TIMING = Timing(boot=3.0, daemon_restart=3.0, restart_announce=10.0, probe=1.0, gateway_interval=1.0, seq_step=1.0,
                     ping_timeout=2.0, device=2.0, device_slow=12.0, device_timeout=5.0, power_on_after_fence=2.0)


@dataclasses.dataclass
class DirLink:
    up: bool = True
    loss: float = 0.0
    burst_until: float = 0.0


@dataclasses.dataclass
class LogLine:
    t: float
    node: str
    phase: Phase
    code: str
    sentence: str
    actions: tuple[str, ...]
