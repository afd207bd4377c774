"""The VM step: restore or cold-boot the managed domains on start; save (or shut down) on stop.

Start, per domain (at most ``vms.parallel`` at a time): already running is
done; otherwise an unconsumed save image whose token the start request
accepts (see ``saveimage.restore_verdict``) and whose size and checksum are
right is claimed and restored; anything else cold-boots, after setting aside
any image it leaves unused. A restore that fails falls back to a cold boot
and says why. A domain that does not start is a failure counted against that
VM; the others carry on.

Stop, per domain: ``save`` writes an image bound to the stop's token (it
falls back to a clean shutdown, then destroy, when the save is refused or
fails); ``shutdown`` shuts down, then destroys after ``vms.shutdown_timeout``;
``destroy`` destroys. The stop fails while any managed domain may still run
(including when libvirt is unreachable), so DRBD is never demoted under a
running VM.

Invariants: a domain is started, resumed or restored only right after a gate
check, and libvirt begins the call at once (it is handed to a free worker of
the client, never queued behind calls a deadline abandoned); per domain, one
operation at a time (starts, stops and the monitor's image
invalidation share a lock); libvirt calls run in the client's threads.
"""

from __future__ import annotations

import asyncio
import math
import os
import time
from collections.abc import Callable, Sequence
from typing import Any
from xml.etree import ElementTree

import libvirt

from .. import logsetup
from ..config import VmsConfig
from .base import GateStale, ImageToken, ResourceError, StartRequest, StepContext
from .libvirtconn import LibvirtClient, LibvirtUnavailable
from .saveimage import ImageStore, restore_verdict
from .threads import SAVE_DIR, run_in
from .vmmonitor import STATE_NAMES, STOPPED, VmInfo, list_managed

log = logsetup.get("daemon.resources.vms")

DESTROY_TIMEOUT = 60.0
POLL = 0.1
SAVE_DIR_WAIT = 5.0  # how long the monitor's hook waits for save_dir to answer


def disk_files(domain_xml: str) -> list[str]:
    """The file paths of a domain's file-backed disks."""
    root = ElementTree.fromstring(domain_xml)
    return [src.get("file", "") for src in root.findall("./devices/disk[@type='file']/source") if src.get("file")]


class VmStep:
    name = "vms"
    stop_attempts = 1  # each domain already falls back save -> shutdown -> destroy

    def __init__(self, cfg: VmsConfig, client: LibvirtClient, images: ImageStore, *,
                 wall: Callable[[], float] = time.time) -> None:
        if client.workers < cfg.parallel + 2:
            # A start queued behind other calls would run long after its gate check.
            raise ValueError(f"the libvirt client needs at least vms.parallel + 2 = {cfg.parallel + 2} workers, not {client.workers}")
        self.cfg, self.client, self.images = cfg, client, images
        self._wall = wall
        self._locks: dict[str, asyncio.Lock] = {}
        self._scan: asyncio.Future[list[str]] | None = None  # the monitor hook's look at save_dir
        self._known = max(1, len(cfg.domains))

    def _waves(self) -> int:
        return math.ceil(self._known / self.cfg.parallel)

    def start_budget(self) -> float:
        return self._waves() * self.cfg.start_timeout + 30.0

    def stop_budget(self) -> float:
        return self._waves() * (self.cfg.save_timeout + self.cfg.shutdown_timeout + DESTROY_TIMEOUT) + 30.0

    def _lock(self, name: str) -> asyncio.Lock:
        return self._locks.setdefault(name, asyncio.Lock())

    async def managed(self) -> list[VmInfo]:
        vms = await self.client.call(lambda c: list_managed(self.cfg, c))
        self._known = max(1, len(vms))
        return vms

    async def _state(self, name: str) -> VmInfo:
        def read(conn: Any) -> VmInfo:
            try:
                state, reason = conn.lookupByName(name).state()
            except libvirt.libvirtError as e:
                if e.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                    return VmInfo(name, "missing")
                raise
            return VmInfo(name, STATE_NAMES.get(state, "nostate"), reason)
        return await self.client.call(read)

    async def _dom(self, name: str, method: str, *args: Any, gate: Callable[[], None] | None = None) -> Any:
        return await self.client.call(lambda c: getattr(c.lookupByName(name), method)(*args), gate=gate)

    # ------------------------------------------------------------------ start

    async def start(self, ctx: StepContext) -> None:
        req = ctx.start
        assert req is not None
        try:
            vms = await self.managed()
        except (LibvirtUnavailable, libvirt.libvirtError) as e:
            raise ResourceError(f"cannot list the VMs: {e}") from e
        if req.vms is not None:
            vms = [v for v in vms if v.name in req.vms]
        if not vms:
            ctx.note("no managed VM is defined here")
        try:
            await run_in(SAVE_DIR, self.images.ensure_dir)
        except ResourceError as e:
            raise ResourceError(f"VMs not started: cannot check for save images: {e}") from e
        sem = asyncio.Semaphore(self.cfg.parallel)
        results = await asyncio.gather(*(self._start_one(ctx, req, v.name, sem) for v in vms), return_exceptions=True)
        stale: GateStale | None = None
        lost = False
        for vm, res in zip(vms, results, strict=True):
            if isinstance(res, GateStale):
                stale = res
            elif isinstance(res, BaseException):
                reason = str(res) if isinstance(res, ResourceError | libvirt.libvirtError) else f"internal error: {res!r}"
                if not isinstance(res, ResourceError | libvirt.libvirtError):
                    log.error("starting %s raised", vm.name, exc_info=res)
                lost = lost or isinstance(res, LibvirtUnavailable)
                ctx.fail("vms", f"{vm.name} did not start: {reason}", vm=vm.name)
                ctx.note(f"{vm.name}: FAILED ({reason})")
            else:
                ctx.note(f"{vm.name}: {res}")
        if stale is not None:
            raise stale
        if lost:
            raise ResourceError("the libvirt connection was lost while starting the VMs")

    async def _start_one(self, ctx: StepContext, req: StartRequest, name: str, sem: asyncio.Semaphore) -> str:
        async with sem, self._lock(name):
            vm = await self._state(name)
            if vm.state == "missing":
                raise ResourceError(f"{name} is not defined on this node")
            if vm.active:
                if await run_in(SAVE_DIR, self.images.invalidate, name, "the domain is already running"):
                    ctx.note(f"{name}: its unused save image was set aside")
                if vm.state == "paused":
                    ctx.check_gate()
                    await self._dom(name, "resume", gate=ctx.check_gate)
                    return "resumed (was paused)"
                return "already running"
            info = await run_in(SAVE_DIR, self.images.find, name)
            why_not: str | None = None
            if info is not None:
                why_not = info.problem or (restore_verdict(info.token, req) if info.token else "it has no token")
                if why_not is None:
                    why_not = await self._disks_written_since(name, info.written_wall)
                if why_not is None:
                    why_not = await run_in(SAVE_DIR, self.images.verify, info)
            if info is not None and why_not is None:
                ctx.check_gate()
                consumed = await run_in(SAVE_DIR, self.images.claim, info)
                ctx.check_gate()
                try:
                    async with asyncio.timeout(self.cfg.start_timeout):
                        await self.client.call(lambda c: c.restore(str(consumed)), gate=ctx.check_gate)
                except TimeoutError:
                    # Still running in libvirt: a cold boot now would race it. Report; the monitor shows the outcome.
                    raise ResourceError(f"restoring {name} did not finish within {self.cfg.start_timeout:g} s "
                                        "(it may still come up)") from None
                except (libvirt.libvirtError, LibvirtUnavailable) as e:
                    log.warning("restoring %s from %s failed (%s); cold-booting it instead", name, consumed.name, e)
                    return await self._cold_boot(ctx, name, f"restore failed ({e}), cold-booted instead")
                await self._after_restore(name)
                return f"restored from its save image ({info.token.id if info.token else '?'})"
            if info is not None:
                log.warning("not restoring %s from %s: %s; cold-booting it", name, info.path.name, why_not)
                await run_in(SAVE_DIR, self.images.invalidate, name, f"not restored: {why_not}")
                return await self._cold_boot(ctx, name, f"cold-booted; save image not used: {why_not}")
            return await self._cold_boot(ctx, name, "cold-booted")

    async def _disks_written_since(self, name: str, since: float | None) -> str | None:
        """Why the image is stale because a disk file of the domain on the replicated filesystem was
        written after the image (the VM ran from its disk since), or None.

        Block-device disks cannot be checked this way; the other rules still apply to them.
        """
        if since is None:
            return "its metadata does not say when it was written"
        xml = await self._dom(name, "XMLDesc", 0)
        files = disk_files(xml)

        def newer() -> list[str]:
            dev = self.images.check()
            out = []
            for f in files:
                try:
                    st = os.stat(f)
                except OSError:
                    continue
                if st.st_dev == dev and st.st_mtime > since:
                    out.append(f)
            return out

        changed = await run_in(SAVE_DIR, newer)
        if changed:
            return f"its disk {', '.join(changed)} was written after the image (the VM ran from its disk since)"
        return None

    async def _after_restore(self, name: str) -> None:
        try:
            await run_in(SAVE_DIR, self.images.cleanup, name)
        except OSError as e:
            log.warning("could not remove the consumed save image of %s: %s", name, e)

    async def _cold_boot(self, ctx: StepContext, name: str, outcome: str) -> str:
        ctx.check_gate()
        try:
            async with asyncio.timeout(self.cfg.start_timeout):
                await self._dom(name, "create", gate=ctx.check_gate)
        except TimeoutError:
            raise ResourceError(f"{name} did not start within {self.cfg.start_timeout:g} s") from None
        except libvirt.libvirtError as e:
            if (await self._state(name)).active:  # a late restore, or a start from elsewhere
                return outcome + " (it was already running)"
            raise ResourceError(f"starting {name} failed: {e}") from e
        return outcome

    # ------------------------------------------------------------------ stop

    async def stop(self, ctx: StepContext) -> None:
        req = ctx.stop
        assert req is not None
        # A start abandoned at its deadline may still be creating a domain in a libvirt thread:
        # wait for it, so what runs is known before deciding what to stop.
        if not await self.client.drain(DESTROY_TIMEOUT):
            raise ResourceError(f"a libvirt call is still running after {DESTROY_TIMEOUT:g} s; cannot tell what runs")
        try:
            vms = await self.managed()
        except (LibvirtUnavailable, libvirt.libvirtError) as e:
            raise ResourceError(f"cannot tell whether the VMs are stopped: {e}") from e
        running = [v.name for v in vms if v.state not in STOPPED]
        if not running:
            ctx.note("no VM running")
            return
        sem = asyncio.Semaphore(self.cfg.parallel)
        image = req.image if req.mode == "save" else None
        results = await asyncio.gather(*(self._stop_one(n, req.mode, image, sem) for n in running), return_exceptions=True)
        failed = []
        for name, res in zip(running, results, strict=True):
            if isinstance(res, BaseException):
                if not isinstance(res, ResourceError):
                    log.error("stopping %s raised", name, exc_info=res)
                failed.append(f"{name}: {res}")
                ctx.fail("vms", f"{name} did not stop: {res}", vm=name)
            else:
                ctx.note(f"{name}: {res}")
        if failed:
            raise ResourceError("VMs still running: " + "; ".join(failed))

    async def _stop_one(self, name: str, mode: str, image: ImageToken | None, sem: asyncio.Semaphore) -> str:
        async with sem, self._lock(name):
            if (await self._state(name)).state in STOPPED:
                return "already stopped"
            why = ""
            if mode == "save" and image is not None:
                problem = await self._save(name, image)
                if problem is None:
                    return "saved"
                why = f"save failed ({problem}); "
                log.warning("saving %s failed: %s; shutting it down instead", name, problem)
                if (await self._state(name)).state in STOPPED:
                    return why + "stopped without a usable image"
            if mode in ("save", "shutdown"):
                if await self._shutdown(name):
                    return why + "shut down"
                why += f"did not shut down within {self.cfg.shutdown_timeout:g} s; "
                log.warning("%s did not shut down within %g s; destroying it", name, self.cfg.shutdown_timeout)
            await self._destroy(name)
            return why + "destroyed"

    async def _save(self, name: str, image: ImageToken) -> str | None:
        try:
            # One deadline for clearing save_dir and libvirt's save: a save_dir that stops answering
            # ends in the shutdown fallback, not in the step's deadline with the VM still running.
            async with asyncio.timeout(self.cfg.save_timeout):
                try:
                    tmp = await run_in(SAVE_DIR, self.images.prepare, name)
                except (ResourceError, OSError) as e:  # OSError: save_dir unwritable (ext4 gone read-only)
                    return f"refused: {e}"
                await self._dom(name, "save", str(tmp))
        except TimeoutError:
            return f"did not finish within {self.cfg.save_timeout:g} s"
        except (libvirt.libvirtError, LibvirtUnavailable) as e:
            return str(e)
        try:
            await run_in(SAVE_DIR, self.images.commit, name, image, self._wall())
        except (ResourceError, OSError) as e:
            return f"the image could not be committed: {e}"
        return None

    async def _shutdown(self, name: str) -> bool:
        try:
            await self._dom(name, "shutdown")
        except libvirt.libvirtError as e:
            log.warning("shutdown of %s refused: %s", name, e)
            return (await self._state(name)).state in STOPPED
        return await self._wait_stopped(name, self.cfg.shutdown_timeout)

    async def _destroy(self, name: str) -> None:
        try:
            await self._dom(name, "destroy")
        except libvirt.libvirtError as e:
            if (await self._state(name)).state not in STOPPED:
                raise ResourceError(f"destroying {name} failed: {e}") from e
        if not await self._wait_stopped(name, DESTROY_TIMEOUT):
            raise ResourceError(f"{name} is still running after destroy")

    async def _wait_stopped(self, name: str, seconds: float) -> bool:
        deadline = time.monotonic() + seconds
        while True:
            if (await self._state(name)).state in STOPPED:
                return True
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(POLL)

    # ------------------------------------------------------------------ monitor hook

    async def observed(self, vms: Sequence[VmInfo]) -> None:
        """The monitor's hook after each observation.

        Keeps the step's deadline in line with the number of managed domains,
        and sets aside the save image of a domain seen running while no
        operation of ours holds it: such a domain was started outside the
        cluster (virsh, an operator), its disk moved on, so its image must
        never be restored.
        """
        self._known = max(1, len(vms))
        running = [vm.name for vm in vms if vm.active]
        if not running:
            return
        # save_dir is looked at in a thread, and not waited for long: a filesystem that stops answering
        # (a dead network mount, DRBD's I/O freeze during a fence) must block neither the event loop nor
        # the monitor. One look at a time, so a hung one does not pile up threads.
        if self._scan is not None and not self._scan.done():
            return
        self._scan = scan = asyncio.ensure_future(run_in(SAVE_DIR, self._with_image, running))
        scan.add_done_callback(lambda t: t.cancelled() or t.exception())  # retrieved even when not waited for
        try:
            async with asyncio.timeout(SAVE_DIR_WAIT):
                with_image = await asyncio.shield(scan)
        except (TimeoutError, OSError) as e:
            log.warning("cannot look for save images in %s (%s); tried again at the next observation",
                        self.images.save_dir, "no answer" if isinstance(e, TimeoutError) else e)
            return
        for name in with_image:  # the exact checks come below; the look only spares libvirt calls
            lock = self._lock(name)
            if lock.locked():
                continue
            async with lock:
                try:
                    if not (await self._state(name)).active:
                        continue
                    await run_in(SAVE_DIR, self.images.invalidate, name, "the domain ran from its disk after the image was written")
                except (ResourceError, libvirt.libvirtError):
                    continue  # the filesystem is not mounted here, or libvirt went away: nothing to set aside
                except OSError as e:  # read-only or failing save_dir: tried again at the next observation
                    log.warning("cannot set aside the save image of %s, which runs: %s", name, e)

    def _with_image(self, names: list[str]) -> list[str]:
        """Blocking: which of ``names`` have an unconsumed image in save_dir."""
        return [n for n in names if self.images.image(n).exists()]
