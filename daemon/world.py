"""The world view: the latest value of every observer, and the event that wakes the decision.

Observers (DRBD adapter, gateway pinger, VM monitor, the mount/address
poller, the image scanner, the fencing parts, the executor's own progress)
write here through the ``on_*`` methods; each call that changes something
sets :attr:`World.changed`. The decision loop reads everything at the start
of a cycle (no I/O) and builds one snapshot (``mapping.Snapshot``).

Invariants:
- Only plain values live here; nothing in this module blocks or awaits.
- ``connected_since`` is the monotonic time DRBD was last seen becoming
  Connected; when the first observation already shows it Connected, that
  first observation's time is taken (a later time voids more fence records,
  which is the safe side: a record is the licence to promote).
- A VM that crashes (libvirt says crashed, or shut off for a crash or a
  failure) is reported once per crash through ``on_crash``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from clever_cluster import policy as P

from .drbd.model import ConnState, DrbdFacts
from .gateway import GatewayFacts
from .mapping import is_crash
from .resources.base import ImageToken as ResImageToken
from .resources.vmmonitor import VmFacts, VmInfo


class World:
    def __init__(self, resource: str, domains: tuple[str, ...], *, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.changed = asyncio.Event()
        self.drbd = DrbdFacts.unknown("unknown", resource, "not observed yet")
        self.drbd_observed = False
        self.connected_since: float | None = None
        self.gateway = GatewayFacts(None, 0, None, None, None, None, 0, ())
        self.fresh: P.FreshProbe | None = None
        self.vms = VmFacts(False, tuple(VmInfo(n, "unknown") for n in domains), clock(), "not observed yet")
        self.vms_observed = False
        self.images: dict[str, ResImageToken] = {}
        self.stopped_by_cluster: set[str] = set()
        self.mounted: bool | None = None
        self.ip: bool | None = None
        self.mount_error: str | None = None
        self.ip_error: str | None = None
        self.peer_reported_off = False
        self.attempt: P.FenceAttempt | None = None
        self.failures: dict[P.LossEpisode, int] = {}
        self.sequence: P.Sequence | None = None
        self.last_result: P.SequenceResult | None = None
        self.shutting_down = False
        self.announcement: P.Announcement | None = None
        self.on_crash: Callable[[str], None] = lambda vm: None
        self._bad_mac = 0
        self._bad_mac_at: float | None = None
        self._crashed: set[str] = set()

    def touch(self) -> None:
        self.changed.set()

    # ------------------------------------------------------------------ observers

    def on_drbd(self, facts: DrbdFacts) -> None:
        now = self.clock()
        was = self.drbd
        if facts.known and facts.connection is ConnState.CONNECTED and not (was.known and was.connection is ConnState.CONNECTED):
            self.connected_since = now
        self.drbd = facts
        self.drbd_observed = self.drbd_observed or facts.known
        self.touch()

    def on_gateway(self, facts: GatewayFacts) -> None:
        self.gateway = facts
        self.touch()

    def on_fresh_probe(self, probe: P.FreshProbe) -> None:
        self.fresh = probe
        self.touch()

    def on_vms(self, facts: VmFacts) -> None:
        if facts.connected:
            for v in facts.vms:
                if v.active:
                    self.stopped_by_cluster.discard(v.name)
                if is_crash(v) and v.name not in self.stopped_by_cluster:
                    if v.name not in self._crashed:
                        self._crashed.add(v.name)
                        self.on_crash(v.name)
                else:
                    self._crashed.discard(v.name)
            self.vms_observed = True
        self.vms = facts
        self.touch()

    def on_images(self, images: dict[str, ResImageToken]) -> None:
        if images != self.images:
            self.images = images
            self.touch()

    def on_mount_ip(self, mounted: bool | None, ip: bool | None, mount_error: str | None, ip_error: str | None) -> None:
        """``None`` keeps the last value (an observation that failed is reported, not turned into 'absent')."""
        changed = False
        if mounted is not None and mounted != self.mounted:
            self.mounted, changed = mounted, True
        if ip is not None and ip != self.ip:
            self.ip, changed = ip, True
        self.mount_error, self.ip_error = mount_error, ip_error
        if changed:
            self.touch()

    def on_peer_reported_off(self, off: bool) -> None:
        if off != self.peer_reported_off:
            self.peer_reported_off = off
            self.touch()

    def note_bad_mac(self, count: int, now: float) -> None:
        if count > self._bad_mac:
            self._bad_mac_at = now
        self._bad_mac = count

    def unauthenticated(self, now: float, timeout: float) -> bool:
        return self._bad_mac_at is not None and now - self._bad_mac_at < timeout

    # ------------------------------------------------------------------ readiness

    def observed(self) -> list[str]:
        """What has not been observed yet (empty: the first decision may run)."""
        missing = []
        if not self.drbd_observed:
            missing.append(f"DRBD ({self.drbd.error or 'no data'})")
        if not self.vms_observed:
            missing.append(f"VMs ({self.vms.error or 'no data'})")
        if self.mounted is None:
            missing.append(f"the mount ({self.mount_error or 'no data'})")
        if self.ip is None:
            missing.append(f"the floating address ({self.ip_error or 'no data'})")
        return missing
