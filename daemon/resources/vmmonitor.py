"""Which domains are managed, and their states as facts (libvirt events plus polling).

Managed domains are ``vms.domains`` (a listed domain that is not defined
here is reported ``missing``) or every defined domain whose name starts with
``vms.name_prefix``. States are libvirt's (``running``, ``paused``,
``shutoff``, ...); while libvirt is unreachable every managed domain is
``unknown`` and ``VmFacts.connected`` is False. Unknown is never a crash.

Invariant: a lifecycle event never becomes a fact by itself; it triggers a
fresh read of the states, so the facts always come from libvirt's own state.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import libvirt

from .. import logsetup
from ..config import VmsConfig
from .libvirtconn import LibvirtClient, LibvirtUnavailable

log = logsetup.get("daemon.resources.vms")

STATE_NAMES = {0: "nostate", 1: "running", 2: "blocked", 3: "paused", 4: "shutdown", 5: "shutoff", 6: "crashed", 7: "pmsuspended"}
# No QEMU process: nothing to stop. "crashed" is not among them: libvirt keeps a domain that crashed
# with on_crash=preserve active, its QEMU process paused with the disks open, until it is destroyed.
STOPPED = frozenset({"shutoff", "missing"})


@dataclasses.dataclass(frozen=True)
class VmInfo:
    name: str
    state: str  # a STATE_NAMES value, "missing" (not defined here) or "unknown" (libvirt unreachable)
    reason: int = -1  # libvirt's state reason (e.g. 3 = running after a restore), -1 when unknown

    @property
    def active(self) -> bool:
        """Running (or paused, ...): a crashed domain is not, although it must still be stopped."""
        return self.state not in STOPPED and self.state not in ("crashed", "unknown")


@dataclasses.dataclass(frozen=True)
class VmFacts:
    connected: bool
    vms: tuple[VmInfo, ...]
    observed_mono: float
    error: str | None = None

    def get(self, name: str) -> VmInfo | None:
        return next((v for v in self.vms if v.name == name), None)

    def to_json(self) -> dict[str, Any]:
        return {"connected": self.connected, "error": self.error, "observed_mono": self.observed_mono,
                "vms": {v.name: {"state": v.state, "reason": v.reason} for v in self.vms}}


def is_managed(cfg: VmsConfig, name: str) -> bool:
    if cfg.domains:
        return name in cfg.domains
    return cfg.name_prefix is not None and name.startswith(cfg.name_prefix)


def list_managed(cfg: VmsConfig, conn: Any) -> list[VmInfo]:
    """Blocking: the managed domains and their states on ``conn``."""
    found: dict[str, VmInfo] = {}
    for dom in conn.listAllDomains(0):
        name = dom.name()
        if not is_managed(cfg, name):
            continue
        try:
            state, reason = dom.state()
        except libvirt.libvirtError as e:
            if e.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                continue  # undefined between the listing and now
            raise
        found[name] = VmInfo(name, STATE_NAMES.get(state, "nostate"), reason)
    for name in cfg.domains:
        found.setdefault(name, VmInfo(name, "missing"))
    return [found[n] for n in sorted(found)]


class VmMonitor:
    """Keeps :class:`VmFacts` current; run :meth:`run` as a task."""

    def __init__(self, client: LibvirtClient, cfg: VmsConfig, *,
                 on_facts: Callable[[VmFacts], None] | None = None,
                 on_observed: Callable[[list[VmInfo]], Awaitable[None]] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.client, self.cfg = client, cfg
        self.on_facts, self.on_observed = on_facts, on_observed
        self._clock = clock
        self._kick = asyncio.Event()
        self.facts = VmFacts(connected=False, vms=tuple(VmInfo(n, "unknown") for n in cfg.domains), observed_mono=clock(),
                             error="not observed yet")
        client.on_event = self._event
        client.on_change = self.kick

    def kick(self) -> None:
        self._kick.set()

    def _event(self, name: str, _event: int, _detail: int) -> None:
        self._kick.set()

    async def run(self) -> None:
        while True:
            self._kick.clear()
            try:
                await self.refresh()
            except Exception:  # a bug: logged, and the facts keep coming (a dead monitor would freeze them)
                log.exception("observing the VMs failed")
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.cfg.poll_interval):
                    await self._kick.wait()

    async def refresh(self) -> VmFacts:
        try:
            vms = await self.client.call(lambda c: list_managed(self.cfg, c))
        except (LibvirtUnavailable, libvirt.libvirtError) as e:
            names: Iterable[str] = [v.name for v in self.facts.vms] or self.cfg.domains
            self._publish(VmFacts(False, tuple(VmInfo(n, "unknown") for n in names), self._clock(), str(e)))
            return self.facts
        self._publish(VmFacts(True, tuple(vms), self._clock()))
        if self.on_observed is not None:
            await self.on_observed(vms)
        return self.facts

    def _publish(self, facts: VmFacts) -> None:
        changed = (facts.connected, facts.vms) != (self.facts.connected, self.facts.vms)
        self.facts = facts
        if changed and self.on_facts is not None:
            self.on_facts(facts)
