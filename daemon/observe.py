"""The runtime's own observers: mount and floating address, save images, the peer's power.

- :class:`MountIpPoller` reads whether the replicated filesystem is mounted
  here (``/proc/self/mountinfo``) and whether the floating address is on its
  interface (netlink), every ``interval`` and at once when kicked (after each
  step of a sequence), in the ``observe`` thread pool.
- :class:`ImageScanner` looks for unconsumed save images of the managed VMs
  while the filesystem is mounted here, in the ``save_dir`` pool, bounded by
  a timeout (a save_dir that stops answering must not stall anything).
- :class:`PeerOffWatcher`: once per loss of the peer, asks the fence devices
  (read-only, trusted devices only) whether the peer's machine already reads
  OFF, so the policy can skip the priority delay (DESIGN 4.4). Never fencing
  evidence: only a fence operation writes a record.

Invariants: every observation runs off the event loop; a failed one keeps the
last value and reports the error (never "absent"); none of them decides.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence

from . import logsetup
from .resources.base import ImageToken as ResImageToken
from .resources.base import ResourceError
from .resources.filesystem import Filesystem
from .resources.ip import FloatingIp
from .resources.saveimage import ImageStore
from .resources.threads import OBSERVE, SAVE_DIR, run_in
from .world import World

log = logsetup.get("daemon.observe")

POLL = 0.5
SCAN_TIMEOUT = 5.0
PEER_OFF_TIMEOUT = 15.0


class MountIpPoller:
    def __init__(self, world: World, fs: Filesystem, ip: FloatingIp, interval: float = POLL) -> None:
        self.world, self.fs, self.ip, self.interval = world, fs, ip, interval
        self._kick = asyncio.Event()
        self._errors: tuple[str | None, str | None] = (None, None)

    def kick(self) -> None:
        self._kick.set()

    def _read(self) -> tuple[bool | None, bool | None, str | None, str | None]:
        mounted: bool | None = None
        present: bool | None = None
        merr = ierr = None
        try:
            mounted = self.fs.state().ours is not None
        except (ResourceError, OSError) as e:
            merr = str(e)
        try:
            present = self.ip.present()
        except (ResourceError, OSError) as e:
            ierr = str(e)
        return mounted, present, merr, ierr

    async def observe(self) -> None:
        """One observation now (also used right after a sequence, before the next decision)."""
        try:
            mounted, present, merr, ierr = await run_in(OBSERVE, self._read)
        except Exception:
            log.exception("observing the mount and the floating address failed")
            return
        if (merr, ierr) != self._errors and (merr or ierr):
            log.warning("cannot observe %s", "; ".join(e for e in (merr, ierr) if e))
        self._errors = (merr, ierr)
        self.world.on_mount_ip(mounted, present, merr, ierr)

    async def run(self) -> None:
        while True:
            self._kick.clear()
            await self.observe()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.interval):
                    await self._kick.wait()


class ImageScanner:
    def __init__(self, world: World, store: ImageStore, interval: float = 2.0) -> None:
        self.world, self.store, self.interval = world, store, interval
        self._kick = asyncio.Event()

    def kick(self) -> None:
        self._kick.set()

    def _scan(self, names: Sequence[str]) -> dict[str, ResImageToken]:
        out: dict[str, ResImageToken] = {}
        for name in names:
            try:
                info = self.store.find(name)
            except (ResourceError, OSError):
                continue
            if info is not None and info.problem is None and info.token is not None:
                out[name] = info.token
        return out

    async def run(self) -> None:
        scan: asyncio.Future[dict[str, ResImageToken]] | None = None
        while True:
            self._kick.clear()
            if not self.world.mounted:
                self.world.on_images({})
            elif scan is None or scan.done():
                names = [v.name for v in self.world.vms.vms]
                # One look at a time: a hung save_dir holds one thread, not one per round.
                scan = asyncio.ensure_future(run_in(SAVE_DIR, self._scan, names))
                try:
                    async with asyncio.timeout(SCAN_TIMEOUT):
                        self.world.on_images(await asyncio.shield(scan))
                except TimeoutError:
                    log.warning("no answer from %s within %g s while looking for save images", self.store.save_dir, SCAN_TIMEOUT)
                except Exception:
                    log.exception("looking for save images failed")
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.interval):
                    await self._kick.wait()


class PeerOffWatcher:
    """Reads the peer's power through its fence devices once per loss (``peer_reads_off``)."""

    def __init__(self, world: World, reads_off: Callable[[], Awaitable[bool]]) -> None:
        self.world = world
        self.reads_off = reads_off
        self._task: asyncio.Task[None] | None = None
        self._lost = False

    def peer_lost(self, lost: bool) -> None:
        """Called on every cycle with whether the peer is lost now."""
        if lost and not self._lost:
            self._task = asyncio.create_task(self._check(), name="peer power read")
        elif not lost and self._lost:
            if self._task is not None:
                self._task.cancel()
            self.world.on_peer_reported_off(False)
        self._lost = lost

    async def _check(self) -> None:
        try:
            async with asyncio.timeout(PEER_OFF_TIMEOUT):
                off = await self.reads_off()
        except TimeoutError:
            off = False
        except Exception as e:  # noqa: BLE001 - no reading is not OFF
            log.warning("reading the peer's power failed: %s", e)
            off = False
        if off:
            log.info("the peer's fence device reads its machine OFF", extra={"fields": {"CLEVER_REASON": "peer_reads_off"}})
        self.world.on_peer_reported_off(off)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
