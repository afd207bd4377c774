"""Building the resource group from the configuration: what the daemon wires in.

:func:`build` returns a :class:`ResourceGroup` holding the executor (with the
four steps in start order), the libvirt client and the VM monitor. The
daemon supplies the DRBD adapter (anything that satisfies ``DrbdControl``),
the policy's gate validator, and where facts go.

Invariant: the VM monitor observes (and so sets aside the images of domains
started outside the cluster) before :meth:`ResourceGroup.start` returns, so
the first start sequence never runs on an unobserved libvirt.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import Callable
from typing import Any

from ..config import Config
from .base import GateCheck
from .drbd import DrbdControl, DrbdStep
from .facts import GroupFact
from .filesystem import Filesystem
from .group import GroupExecutor
from .ip import FloatingIp
from .libvirtconn import LibvirtClient, Opener
from .saveimage import ImageStore
from .vmmonitor import VmFacts, VmMonitor
from .vms import VmStep


@dataclasses.dataclass
class ResourceGroup:
    executor: GroupExecutor
    filesystem: Filesystem
    ip: FloatingIp
    vms: VmStep
    libvirt: LibvirtClient
    monitor: VmMonitor
    _task: asyncio.Task[None] | None = None

    async def start(self, connect_timeout: float = 10.0) -> None:
        """Connect to libvirt (waiting up to ``connect_timeout``; it keeps retrying after that) and start monitoring."""
        await self.libvirt.start()
        if await self.libvirt.wait_connected(connect_timeout):
            await self.monitor.refresh()
        self._task = asyncio.create_task(self.monitor.run(), name="vm monitor")

    def status(self, runs: int = 5) -> dict[str, Any]:
        """For ``clevervm status``: the sequence in flight, the last runs with their phase timings, VM states."""
        ex = self.executor
        return {
            "sequence": ex.in_flight.to_json() if ex.in_flight else None,
            "history": [r.to_json() for r in ex.history[-runs:]],
            "failures": [f.to_json() for f in ex.failures[-20:]],
            "vms": self.monitor.facts.to_json(),
        }

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.libvirt.close()


def build(cfg: Config, drbd: DrbdControl, gate: GateCheck, *,
          on_fact: Callable[[GroupFact], None] | None = None,
          on_vm_facts: Callable[[VmFacts], None] | None = None,
          opener: Opener | None = None) -> ResourceGroup:
    fs = Filesystem(cfg.filesystem)
    ip = FloatingIp(cfg.ip)
    client = LibvirtClient(cfg.vms.uri, opener=opener, workers=cfg.vms.parallel + 4)
    vms = VmStep(cfg.vms, client, ImageStore(cfg.vms.save_dir, fs))
    monitor = VmMonitor(client, cfg.vms, on_facts=on_vm_facts, on_observed=vms.observed)
    executor = GroupExecutor([DrbdStep(drbd, cfg.drbd.command_timeout), fs, ip, vms], gate, on_fact=on_fact)
    return ResourceGroup(executor=executor, filesystem=fs, ip=ip, vms=vms, libvirt=client, monitor=monitor)
