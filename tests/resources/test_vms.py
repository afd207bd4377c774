"""VMs against libvirt's test driver: save/restore through save_dir, the image rules of DESIGN
section 7, bounded parallelism, shutdown fallbacks, the gate, and facts from events.

Two connections to two node files play "node A" and "node B"; both see the same mounted
ext4 (the replicated filesystem), as the node that mounts it after a handover would.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import libvirt
import pytest

from clever_cluster.daemon.config import VmsConfig
from clever_cluster.daemon.resources.base import ImageToken, StartRequest, StopRequest
from clever_cluster.daemon.resources.filesystem import Filesystem
from clever_cluster.daemon.resources.group import GroupExecutor
from clever_cluster.daemon.resources.libvirtconn import LibvirtClient
from clever_cluster.daemon.resources.saveimage import ImageStore
from clever_cluster.daemon.resources.vmmonitor import VmInfo, VmMonitor
from clever_cluster.daemon.resources.vms import VmStep
from clever_cluster.sim.libvirt_nodes import RUNNING, SHUTOFF, write_node
from tests.resources.conftest import Ext4
from tests.resources.helpers import DomainFaults, Gate, HungFilesystem, until

pytestmark = pytest.mark.root

PLC = ["plc1", "plc2", "plc3"]
T1 = ImageToken("handover", "grant-41", "7:node1", "0A1B2C3D")
T2 = ImageToken("handover", "grant-42", "7:node1", "0A1B2C3D")
BOOTED, RESTORED = 1, 3  # running reasons
SHUTDOWN, DESTROYED, SAVED = 1, 2, 5  # shutoff reasons


@dataclasses.dataclass
class Node:
    client: LibvirtClient
    step: VmStep
    ex: GroupExecutor
    gate: Gate

    async def state(self, name: str) -> tuple[int, int]:
        s = await self.client.call(lambda c: c.lookupByName(name).state())
        return s[0], s[1]

    async def states(self, names: list[str]) -> dict[str, tuple[int, int]]:
        return {n: await self.state(n) for n in names}


@dataclasses.dataclass
class World:
    tmp: Path
    ext4: Ext4
    fs: Filesystem
    make_client: Callable[..., Any]

    def cfg(self, **kw: Any) -> VmsConfig:
        base: dict[str, Any] = {"save_dir": self.ext4.mountpoint / "save", "name_prefix": "plc", "parallel": 4,
                                "start_timeout": 10.0, "save_timeout": 10.0, "shutdown_timeout": 1.0}
        base.update(kw)
        return VmsConfig(**base)

    async def node(self, label: str, state: int, names: list[str] | None = None, *, cfg: VmsConfig | None = None,
                   faults: DomainFaults | None = None, workers: int = 8, disks: dict[str, Path] | None = None) -> Node:
        names = PLC if names is None else names
        uri = write_node(self.tmp / f"{label}.xml", [(n, state) for n in names] + [("other", state)], disks)
        kw: dict[str, Any] = {"workers": workers}
        if faults is not None:
            kw["opener"] = faults.opener(libvirt.open)
        client = await self.make_client(uri, **kw)
        cfg = cfg or self.cfg()
        step = VmStep(cfg, client, ImageStore(cfg.save_dir, self.fs))
        gate = Gate()
        return Node(client, step, GroupExecutor([step], gate), gate)

    def files(self) -> list[str]:
        d = self.ext4.mountpoint / "save"
        return sorted(os.listdir(d)) if d.exists() else []


@pytest.fixture
def world(tmp_path: Path, ext4: Ext4, libvirt_clients: Callable[..., Any]) -> World:
    ext4.mount()
    return World(tmp_path, ext4, ext4.filesystem(), libvirt_clients)


def handover(image: ImageToken = T1) -> StartRequest:
    return StartRequest(token=image.id, takeover="handover", image=image)


def save(image: ImageToken = T1) -> StopRequest:
    return StopRequest(token=image.id, mode="save", image=image)


async def test_save_restore_round_trip_through_save_dir(world: World) -> None:
    a = await world.node("a", RUNNING)
    b = await world.node("b", SHUTOFF)
    rec = await a.ex.stop(save())
    assert rec.outcome == "succeeded", rec.error
    assert await a.states(PLC) == {n: (5, SAVED) for n in PLC}
    assert (await a.state("other"))[0] == 1  # not managed: untouched
    assert world.files() == sorted([f"{n}.save" for n in PLC] + [f"{n}.meta.json" for n in PLC])
    meta = json.loads((world.ext4.mountpoint / "save" / "plc1.meta.json").read_text())
    image = (world.ext4.mountpoint / "save" / "plc1.save").read_bytes()
    assert meta["token"] == T1.to_json()
    assert meta["size"] == len(image) and meta["sha256"] == hashlib.sha256(image).hexdigest()

    rec = await b.ex.start(handover())
    assert rec.outcome == "succeeded", rec.error
    assert await b.states(PLC) == {n: (1, RESTORED) for n in PLC}
    assert (await b.state("other"))[0] == 5
    assert world.files() == []  # consumed, then cleaned up
    assert "plc1: restored from its save image (grant-41)" in rec.phases[0].detail


async def test_truncated_image_falls_back_to_cold_boot(world: World) -> None:
    a, b = await world.node("a", RUNNING), await world.node("b", SHUTOFF)
    await a.ex.stop(save())
    img = world.ext4.mountpoint / "save" / "plc1.save"
    img.write_bytes(img.read_bytes()[:40])
    rec = await b.ex.start(handover())
    assert rec.outcome == "succeeded"
    assert await b.states(PLC) == {"plc1": (1, BOOTED), "plc2": (1, RESTORED), "plc3": (1, RESTORED)}
    assert "plc1: cold-booted; save image not used: its size is 40 bytes" in rec.phases[0].detail
    assert "plc1.save.stale" in world.files() and "plc1.save" not in world.files()


async def test_restore_that_libvirt_rejects_falls_back_to_cold_boot(world: World) -> None:
    a, b = await world.node("a", RUNNING), await world.node("b", SHUTOFF)
    await a.ex.stop(save())
    d = world.ext4.mountpoint / "save"
    garbage = b"not a libvirt save image" * 10
    (d / "plc2.save").write_bytes(garbage)
    meta = json.loads((d / "plc2.meta.json").read_text())
    meta.update(size=len(garbage), sha256=hashlib.sha256(garbage).hexdigest())  # consistent, but unusable
    (d / "plc2.meta.json").write_text(json.dumps(meta))
    rec = await b.ex.start(handover())
    assert await b.states(PLC) == {"plc1": (1, RESTORED), "plc2": (1, BOOTED), "plc3": (1, RESTORED)}
    assert "plc2: restore failed (" in rec.phases[0].detail and "cold-booted instead" in rec.phases[0].detail
    assert "plc2.save" not in world.files()  # consumed: never tried again


async def test_restore_past_its_deadline_is_a_failure_not_a_racing_cold_boot(world: World) -> None:
    a = await world.node("a", RUNNING)
    faults = DomainFaults()
    faults.slow_restore = 0.6
    b = await world.node("b", SHUTOFF, cfg=world.cfg(start_timeout=0.2), faults=faults)
    await a.ex.stop(save())
    rec = await b.ex.start(handover())
    assert rec.outcome == "succeeded"  # per-VM failures do not roll the group back
    assert [f.vm for f in b.ex.failures] == PLC
    assert "did not finish within 0.2 s (it may still come up)" in b.ex.failures[0].reason
    assert faults.entered == []  # no cold boot raced the restores
    assert await b.client.drain(10)
    assert await b.states(PLC) == {n: (1, RESTORED) for n in PLC}  # they did come up, restored


async def test_image_never_restored_twice_after_a_crash_between_restore_and_cleanup(world: World,
                                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    a, b = await world.node("a", RUNNING), await world.node("b", SHUTOFF)
    await a.ex.stop(save())
    cleaned: list[str] = []
    # The daemon dies right after the restores: the cleanup never happens.
    monkeypatch.setattr(ImageStore, "cleanup", lambda self, domain: cleaned.append(domain))
    rec = await b.ex.start(handover())
    assert await b.states(PLC) == {n: (1, RESTORED) for n in PLC}
    assert sorted(cleaned) == PLC
    assert world.files() == sorted([f"{n}.save.consumed" for n in PLC] + [f"{n}.meta.json" for n in PLC])

    # Node B goes down with its VMs; a fresh daemon there carries on the same handover.
    await b.client.close()
    b2 = await world.node("b", SHUTOFF)
    rec = await b2.ex.start(handover())
    assert rec.outcome == "succeeded"
    assert await b2.states(PLC) == {n: (1, BOOTED) for n in PLC}
    assert all(f.endswith((".consumed", ".meta.json")) for f in world.files())


async def test_image_from_another_handover_is_refused(world: World) -> None:
    a, b = await world.node("a", RUNNING), await world.node("b", SHUTOFF)
    await a.ex.stop(save(T1))
    rec = await b.ex.start(handover(T2))
    assert await b.states(PLC) == {n: (1, BOOTED) for n in PLC}
    assert "written for handover grant-41" in rec.phases[0].detail and "not for handover grant-42" in rec.phases[0].detail
    assert world.files() == sorted([f"{n}.save.stale" for n in PLC] + [f"{n}.meta.json" for n in PLC])


@pytest.mark.parametrize(("origin", "data_uuid", "restored"), [
    ("forcestop", "0A1B2C3D", True),
    ("forcestop", "99999999", False),  # the data moved on since the forcestop
    ("forcestop", None, False),  # nothing to check it against
    ("handover", "0A1B2C3D", False),  # an unfinished handover's image is never used after a failover
])
async def test_after_an_unplanned_failover_only_a_forcestop_image_is_restored(
        world: World, origin: str, data_uuid: str | None, restored: bool) -> None:
    a, b = await world.node("a", RUNNING), await world.node("b", SHUTOFF)
    token = ImageToken(origin, "fs-1" if origin == "forcestop" else "grant-9", "7:node1", "0A1B2C3D")  # type: ignore[arg-type]
    await a.ex.stop(StopRequest(token=None, mode="save", image=token))
    rec = await b.ex.start(StartRequest(token="episode-3", takeover="failover", data_uuid=data_uuid))
    assert rec.outcome == "succeeded"
    assert await b.states(PLC) == {n: (1, RESTORED if restored else BOOTED) for n in PLC}


async def test_save_refused_when_save_dir_is_not_on_the_mounted_filesystem(world: World) -> None:
    a = await world.node("a", RUNNING)
    world.ext4.umount()
    bare = world.ext4.mountpoint / "save"
    bare.mkdir()  # a save_dir on the root filesystem under the empty mountpoint: the trap
    rec = await a.ex.stop(save())
    assert rec.outcome == "succeeded"
    assert await a.states(PLC) == {n: (5, SHUTDOWN) for n in PLC}  # shut down instead
    assert os.listdir(bare) == []
    assert "save failed (refused:" in rec.phases[0].detail and "is not mounted" in rec.phases[0].detail
    bare.rmdir()

    # Mounted, but save_dir leads off the replicated filesystem (a symlink): refused by device number.
    world.ext4.mount()
    elsewhere = world.tmp / "elsewhere"
    elsewhere.mkdir()
    (world.ext4.mountpoint / "save").symlink_to(elsewhere)
    a2 = await world.node("a2", RUNNING)
    rec = await a2.ex.stop(save())
    assert await a2.states(PLC) == {n: (5, SHUTDOWN) for n in PLC}
    assert os.listdir(elsewhere) == []
    assert "is not on the replicated filesystem" in rec.phases[0].detail


async def test_parallel_start_of_twenty_domains_honours_the_bound(world: World) -> None:
    names = [f"plc{i:02d}" for i in range(20)]
    faults = DomainFaults(hold_until=4, expected=len(names))
    b = await world.node("b", SHUTOFF, names, cfg=world.cfg(parallel=4), faults=faults, workers=24)
    rec = await b.ex.start(StartRequest(token="e", takeover="cold_start"))
    assert rec.outcome == "succeeded", rec.error
    assert all(s == (1, BOOTED) for s in (await b.states(names)).values())
    assert faults.max_in_flight == 4


async def test_domain_that_ignores_shutdown_is_destroyed_after_its_timeout(world: World) -> None:
    faults = DomainFaults()
    faults.ignore_shutdown = {"plc2"}
    a = await world.node("a", RUNNING, faults=faults)
    rec = await a.ex.stop(StopRequest(token=None, mode="shutdown"))
    assert rec.outcome == "succeeded"
    assert await a.states(PLC) == {"plc1": (5, SHUTDOWN), "plc2": (5, DESTROYED), "plc3": (5, SHUTDOWN)}
    assert faults.shutdowns_ignored == ["plc2"]
    assert "plc2: did not shut down within 1 s; destroyed" in rec.phases[0].detail


async def test_gate_going_stale_mid_step_starts_no_further_vm(world: World) -> None:
    b = await world.node("b", SHUTOFF, cfg=world.cfg(parallel=1))
    b.gate.stale_after = 3  # the executor's check and plc1's two (before and at its create) pass; then it is withdrawn
    rec = await b.ex.start(StartRequest(token="e", takeover="cold_start"))
    assert rec.outcome == "stale"
    states = await b.states(PLC)
    assert states["plc1"] == (5, SHUTDOWN)  # started, then rolled back
    assert states["plc2"][0] == 5 and states["plc3"][0] == 5
    assert states["plc2"][1] != SHUTDOWN and states["plc3"][1] != SHUTDOWN  # never started


async def test_domain_started_outside_the_cluster_loses_its_image(world: World) -> None:
    a, b = await world.node("a", RUNNING), await world.node("b", SHUTOFF)
    fs_token = ImageToken("forcestop", "fs-2", "7:node1", "0A1B2C3D")
    await a.ex.stop(StopRequest(token=None, mode="save", image=fs_token))
    await a.client.call(lambda c: c.lookupByName("plc1").create())  # an operator's virsh start
    monitor = VmMonitor(a.client, a.step.cfg, on_observed=a.step.observed)
    await monitor.refresh()
    assert "plc1.save.stale" in world.files() and "plc2.save" in world.files()
    await b.ex.start(StartRequest(token="episode-4", takeover="failover", data_uuid="0A1B2C3D"))
    assert await b.states(PLC) == {"plc1": (1, BOOTED), "plc2": (1, RESTORED), "plc3": (1, RESTORED)}


async def test_restore_refused_when_a_disk_was_written_after_the_save(world: World, tmp_path: Path) -> None:
    """Regression (red team): a VM run from its disk after its image was written (by hand, while the
    daemon was down) must not be restored from that image, whatever its token says."""
    disks = {n: world.ext4.mountpoint / f"{n}.qcow2" for n in PLC}
    for d in disks.values():
        d.write_bytes(b"disk")
    a = await world.node("a", RUNNING, disks=disks)
    b = await world.node("b", SHUTOFF, disks=disks)
    await a.ex.stop(save())
    written = json.loads((world.ext4.mountpoint / "save" / "plc2.meta.json").read_text())["written_wall"]
    os.utime(disks["plc2"], (written + 5, written + 5))
    rec = await b.ex.start(handover())
    assert await b.states(PLC) == {"plc1": (1, RESTORED), "plc2": (1, BOOTED), "plc3": (1, RESTORED)}
    assert f"its disk {disks['plc2']} was written after the image" in rec.phases[0].detail
    assert "plc2.save.stale" in world.files()


async def test_stop_waits_for_a_start_abandoned_in_its_thread(world: World) -> None:
    """Regression (red team): a start cancelled while libvirt was still creating a domain left that
    create running in its thread; a stop right after saw nothing running and the VM came up later."""
    import asyncio

    faults = DomainFaults()
    faults.slow_create = {"plc2": 1.0}
    b = await world.node("b", SHUTOFF, faults=faults)
    task = asyncio.create_task(b.ex.start(StartRequest(token="e", takeover="cold_start")))
    await until(lambda: "plc2" in faults.entered, 10, "plc2's create to begin")
    task.cancel()  # the daemon stops while libvirt is still creating plc2
    with contextlib.suppress(asyncio.CancelledError):
        await task
    assert "plc2" not in faults.finished
    rec = await b.ex.stop(StopRequest(token=None, mode="destroy"))
    assert rec.outcome == "succeeded", rec.error
    assert "plc2" in faults.finished  # the stop waited for it ...
    assert all(s[0] == 5 for s in (await b.states(PLC)).values()), await b.states(PLC)  # ... and stopped it


async def test_client_pool_must_exceed_the_parallel_bound(world: World) -> None:
    client = await world.make_client(write_node(world.tmp / "x.xml", [("plc1", RUNNING)]), workers=4)
    with pytest.raises(ValueError, match=r"at least vms\.parallel"):
        VmStep(world.cfg(parallel=4), client, ImageStore(world.ext4.mountpoint / "save", world.fs))


async def test_monitor_reports_states_from_events(world: World) -> None:
    a = await world.node("a", RUNNING, cfg=world.cfg(poll_interval=300.0))
    seen: list[dict[str, str]] = []
    monitor = VmMonitor(a.client, a.step.cfg, on_facts=lambda f: seen.append({v.name: v.state for v in f.vms}))
    import asyncio

    task = asyncio.create_task(monitor.run())
    try:
        await until(lambda: monitor.facts.connected, 5, "the first observation")
        assert {v.name: v.state for v in monitor.facts.vms} == {n: "running" for n in PLC}  # "other" is not managed
        await a.client.call(lambda c: c.lookupByName("plc3").destroy())
        # With a 300 s poll interval only the lifecycle event can bring this news.
        await until(lambda: monitor.facts.get("plc3") is not None and monitor.facts.get("plc3").state == "shutoff",  # type: ignore[union-attr]
                    5, "plc3 reported shut off")
        assert seen[-1] == {"plc1": "running", "plc2": "running", "plc3": "shutoff"}
    finally:
        task.cancel()


async def test_a_create_never_waits_in_the_libvirt_queue_after_its_gate_check(world: World,
                                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """Regression (red team): creates abandoned at their deadline keep their libvirt threads. With the
    monitor's poll stuck in the last free one, the next VM's create, submitted right after its gate
    check, waited in the pool's queue; the grant was withdrawn meanwhile, and when libvirt caught up
    the VM was started under the stale gate (S1)."""
    import asyncio
    import threading

    names = ["plc1", "plc2", "plc3"]
    stuck = threading.Event()
    faults = DomainFaults()
    faults.hold_create = {"plc1": stuck, "plc2": stuck}  # libvirt hangs on these two
    cfg = world.cfg(parallel=1, start_timeout=1.0, poll_interval=0.05)
    b = await world.node("b", SHUTOFF, names, cfg=cfg, faults=faults, workers=3)
    real_find = ImageStore.find

    def find(self: ImageStore, domain: str) -> Any:
        if domain == "plc3":  # between plc3's state read and its create: the monitor's poll hangs too
            faults.hold_list = stuck
            assert faults.list_held.wait(10)
        return real_find(self, domain)

    monkeypatch.setattr(ImageStore, "find", find)
    monitor = asyncio.create_task(VmMonitor(b.client, cfg).run())
    try:
        start = asyncio.create_task(b.ex.start(StartRequest(token="e", takeover="cold_start")))
        # Checks: the executor's, then plc1's, plc2's and plc3's right before each create.
        await until(lambda: b.gate.checks >= 4, 10, "plc3's gate check")
        b.gate.stale = "grant g1 was withdrawn"
        stuck.set()  # libvirt catches up
        rec = await start
    finally:
        stuck.set()
        monitor.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await monitor
    assert await b.client.drain(10)
    assert "plc3" not in faults.entered, "plc3 was created after its gate went stale"
    assert rec.outcome == "stale", rec.error
    assert all(s[0] == 5 for s in (await b.states(names)).values())


async def test_stop_ends_a_crashed_domain_whose_process_is_kept(world: World) -> None:
    """Regression (red team): libvirt's "crashed" state (on_crash=preserve) keeps the domain active,
    its QEMU process paused with the disks open; the stop took it for stopped and reported success
    with the domain still active on the replicated filesystem."""
    crashed = 6
    a = await world.node("a", crashed, ["plc1"])
    assert await a.client.call(lambda c: c.lookupByName("plc1").isActive()) == 1
    rec = await a.ex.stop(StopRequest(token=None, mode="shutdown"))
    assert rec.outcome == "succeeded", rec.error
    assert await a.client.call(lambda c: c.lookupByName("plc1").isActive()) == 0
    assert "plc1: " in rec.phases[0].detail and "no VM running" not in rec.phases[0].detail


async def test_save_on_a_filesystem_gone_read_only_falls_back_to_shutdown(world: World) -> None:
    """Regression (red team): ext4 remounts itself read-only after an I/O error (errors=remount-ro);
    preparing the save then raised OSError, which skipped the shutdown fallback: the handover's stop
    failed with every VM left running on the read-only filesystem."""
    import subprocess

    a = await world.node("a", RUNNING)
    (world.ext4.mountpoint / "save").mkdir()
    subprocess.run(["mount", "-o", "remount,ro", str(world.ext4.mountpoint)], check=True)
    rec = await a.ex.stop(save())
    assert rec.outcome == "succeeded", rec.error
    assert await a.states(PLC) == {n: (5, SHUTDOWN) for n in PLC}
    assert "plc1: save failed (refused: " in rec.phases[0].detail and "Read-only file system" in rec.phases[0].detail


async def test_monitor_survives_an_image_it_cannot_set_aside(world: World) -> None:
    """Regression (red team): a domain started by hand while its save image lies on a filesystem gone
    read-only: setting the image aside raised OSError out of the monitor's hook, the monitor task
    died, and the VM facts froze at their last value for good."""
    import asyncio
    import subprocess

    a = await world.node("a", RUNNING, cfg=world.cfg(poll_interval=0.1))
    await a.ex.stop(StopRequest(token=None, mode="save", image=ImageToken("forcestop", "fs-3", "7:node1", "0A1B2C3D")))
    await a.client.call(lambda c: c.lookupByName("plc1").create())  # an operator's virsh start
    subprocess.run(["mount", "-o", "remount,ro", str(world.ext4.mountpoint)], check=True)
    monitor = VmMonitor(a.client, a.step.cfg, on_observed=a.step.observed)
    task = asyncio.create_task(monitor.run())
    try:
        await until(lambda: monitor.facts.connected or task.done(), 5, "the first observation")
        await a.client.call(lambda c: c.lookupByName("plc1").destroy())
        await until(lambda: task.done() or (monitor.facts.get("plc1") or VmInfo("plc1", "unknown")).state == "shutoff", 5,
                    "plc1 reported shut off")
        assert not task.done(), f"the monitor died: {task.exception()!r}"
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_a_hung_save_dir_blocks_neither_the_event_loop_nor_the_monitor(world: World,
                                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Regression (red team): the monitor's hook looked for each running domain's save image with a
    stat on the event loop. A filesystem that stops answering there (a network filesystem mounted on
    save_dir whose server died; DRBD's I/O freeze while the peer is being fenced) blocked the whole
    daemon loop, heartbeats and fencing included, for as long as it hung."""
    import asyncio
    import threading

    from clever_cluster.daemon.resources import vms as vms_module

    monkeypatch.setattr(vms_module, "SAVE_DIR_WAIT", 0.5)
    a = await world.node("a", RUNNING, cfg=world.cfg(poll_interval=0.1))
    save_dir = world.ext4.mountpoint / "save"
    save_dir.mkdir()
    hung = HungFilesystem(save_dir)
    safety = threading.Timer(20, hung.release)  # the test ends even if the loop is blocked
    safety.start()
    monitor = VmMonitor(a.client, a.step.cfg, on_observed=a.step.observed)
    task = asyncio.create_task(monitor.run())
    try:
        assert await asyncio.to_thread(hung.pending.wait, 10)  # the monitor is looking into the hung filesystem
        await a.client.call(lambda c: c.lookupByName("plc2").destroy())
        await until(lambda: (monitor.facts.get("plc2") or VmInfo("plc2", "unknown")).state == "shutoff", 8,
                    "the monitor to report plc2 shut off while save_dir hangs")
        assert not hung.released, "the event loop was blocked until the hung filesystem was released"
    finally:
        safety.cancel()
        hung.close()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_save_into_a_hung_save_dir_falls_back_to_shutdown_in_time(world: World,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """Regression (red team): preparing the save (clearing old files in save_dir) had no deadline of
    its own: with save_dir hung (a dead network mount on it), each VM's stop waited for it until the
    whole step's budget ran out, and the stop failed with every VM left running, instead of giving
    up on the image after vms.save_timeout and shutting the VM down."""
    import asyncio
    import threading

    from clever_cluster.daemon.resources import vms as vms_module

    monkeypatch.setattr(vms_module, "DESTROY_TIMEOUT", 5.0)  # keeps the step budget (and this test when it fails) short
    a = await world.node("a", RUNNING, cfg=world.cfg(save_timeout=1.0))
    save_dir = world.ext4.mountpoint / "save"
    save_dir.mkdir()
    hung = HungFilesystem(save_dir)
    safety = threading.Timer(60, hung.release)
    safety.start()
    try:
        rec = await a.ex.stop(save())
        assert not hung.released
        assert rec.outcome == "succeeded", rec.error
        assert await a.states(PLC) == {n: (5, SHUTDOWN) for n in PLC}
        assert "plc1: save failed (did not finish within 1 s); shut down" in rec.phases[0].detail
    finally:
        safety.cancel()
        hung.close()
        await asyncio.sleep(0)
