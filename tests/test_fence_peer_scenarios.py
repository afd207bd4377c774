"""DESIGN 4.5 end to end on one machine: the DRBD simulator runs the real
``clevervm fence-peer`` executable, which asks the real fence-peer service
over the real control socket, with in-test heartbeat and fencing parts
(tests/fence_world.py) wired to a real namespace lab.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from clever_cluster.daemon.config import DrbdConfig
from clever_cluster.daemon.control import ControlServer
from clever_cluster.daemon.drbd.adapter import DrbdAdapter
from clever_cluster.daemon.fence_peer import FencePeerService, OutdateResponder
from clever_cluster.sim import netns
from clever_cluster.sim.drbd.lab import DrbdPair, SimNode

from .fence_world import LabFencer, LabHeartbeat, Local

pytestmark = [pytest.mark.root, pytest.mark.slow]
CLEVERVM = str(Path(sys.executable).with_name("clevervm"))
FAST = {"ping_int": 1.0, "ping_timeout": 0.5}


def adapter(n: SimNode) -> DrbdAdapter:
    return DrbdAdapter(DrbdConfig(resource="r0", drbdadm=str(n.drbdadm), drbdsetup=str(n.drbdsetup), proc_drbd=n.proc_drbd,
                                  poll_interval=0.1, command_timeout=15.0))


@dataclasses.dataclass
class Host:
    """The daemon side of one node: its control socket, the service, its DRBD adapter."""

    local: Local
    adapter: DrbdAdapter
    fencer: LabFencer
    heartbeat: LabHeartbeat
    service: FencePeerService
    server: ControlServer
    watcher: asyncio.Task[None]

    async def close(self) -> None:
        self.watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.watcher
        await self.server.close()


@dataclasses.dataclass
class World:
    topo: netns.TwoNodes
    pair: DrbdPair
    socks: list[Path]
    hosts: dict[int, Host]
    peers: dict[int, DrbdAdapter]

    def node(self, i: int) -> SimNode:
        return self.pair.node(i)

    async def state(self, i: int) -> dict[str, Any]:
        return await asyncio.to_thread(self.node(i).state)

    async def wait(self, i: int, pred: Any, what: str, timeout: float = 20.0) -> dict[str, Any]:
        st: dict[str, Any] = await asyncio.to_thread(self.node(i).wait, pred, timeout, what)
        return st

    async def run(self, i: int, *args: str) -> subprocess.CompletedProcess[str]:
        return await asyncio.to_thread(self.node(i).run, *args)

    async def write(self, i: int, timeout: float = 5.0) -> dict[str, Any]:
        r: dict[str, Any] = await asyncio.to_thread(self.node(i).write, 16, timeout)
        return r

    def handler_log(self, i: int) -> str:
        return self.node(i).log()

    async def add_host(self, i: int, phase: str, fence_mode: str, record_dir: Path) -> Host:
        n, peer = self.node(i), self.node(3 - i)
        a = adapter(n)
        await a.start()
        pa = self.peers.get(3 - i) or adapter(peer)
        if 3 - i not in self.peers:
            await pa.start()
            self.peers[3 - i] = pa
        local = Local(phase)
        hb = LabHeartbeat(self.topo, i, peer, OutdateResponder("r0", pa, timeout=30.0))
        fencer = LabFencer(self.topo, 3 - i, peer, record_dir, fence_mode)
        svc = FencePeerService("r0", peer.name, local=local, peer=hb, fencer=fencer, drbd=a)
        srv = ControlServer(self.socks[i - 1], svc.handlers())
        await srv.start()
        h = Host(local, a, fencer, hb, svc, srv, asyncio.create_task(svc.run(0.2)))
        self.hosts[i] = h
        return h


@contextlib.asynccontextmanager
async def world(topo: netns.TwoNodes, tmp_path: Path, version: str, *, loop: bool = False) -> AsyncIterator[World]:
    sockdir = Path(tempfile.mkdtemp(prefix="ccfw"))
    socks = [sockdir / "n1.sock", sockdir / "n2.sock"]
    node_conf = {i + 1: {"handlers": {"fence-peer": f"{CLEVERVM} --socket {socks[i]} fence-peer",
                                      "unfence-peer": f"{CLEVERVM} --socket {socks[i]} unfence-peer"}} for i in range(2)}
    pair = DrbdPair(tmp_path / "drbd", version, topo=topo, conf=FAST, node_conf=node_conf, loop=loop)
    w = World(topo, pair, socks, {}, {})
    try:
        await asyncio.to_thread(pair.start)
        await asyncio.to_thread(pair.wait_connected)
        yield w
    finally:
        for h in w.hosts.values():
            await h.close()
        for a in [*(h.adapter for h in w.hosts.values()), *w.peers.values()]:
            await a.close()
        await asyncio.to_thread(pair.close)
        shutil.rmtree(sockdir, ignore_errors=True)


@pytest.fixture
def topo(netlab: netns.Lab) -> netns.TwoNodes:
    return netns.two_nodes(netlab)


async def become_primary(w: World) -> None:
    assert (await w.run(1, "drbdadm", "primary", "r0")).returncode == 0
    assert (await w.write(1))["replicated"] is True


async def cut_all_paths(w: World) -> None:
    """Replication link, second link and the peer's uplink: node1 still reaches the gateway."""
    for ifname in ("hb0", "hb1"):
        await asyncio.to_thread(w.topo.lab.down, w.topo.n1.ns, ifname)
    await asyncio.to_thread(w.topo.cut_uplink, 2)


def handler_exits(log: str) -> list[str]:
    return [ln.rsplit(" ", 1)[1] for ln in log.splitlines() if "fence-peer handler exited" in ln]


@pytest.mark.parametrize("version", ["9", "8.4"])
async def test_link_cut_with_lan_up_outdates_the_peer(topo: netns.TwoNodes, tmp_path: Path, version: str) -> None:
    async with world(topo, tmp_path, version) as w:
        h = await w.add_host(1, "PRIMARY", "ok", tmp_path)
        await become_primary(w)
        await asyncio.to_thread(topo.lab.down, topo.n1.ns, "hb0")  # the replication link only
        await w.wait(1, lambda s: s["peer_disk"] == "Outdated" and not s["susp"], "peer outdated and writes resumed")
        assert handler_exits(w.handler_log(1)) == ["4"]
        assert h.fencer.calls == 0 and h.heartbeat.requests >= 1 and h.service.resumes == 0  # DRBD resumed on exit 4
        assert (await w.write(1))["ok"]
        assert (await w.state(2))["disk"] == "Outdated"
        r = await w.run(2, "drbdadm", "primary", "r0")
        assert r.returncode == 17 and "(-2) Need access to UpToDate data" in r.stderr  # the peer cannot promote


async def test_all_links_cut_fences_then_writes_resume(topo: netns.TwoNodes, tmp_path: Path) -> None:
    async with world(topo, tmp_path, "9") as w:
        h = await w.add_host(1, "PRIMARY", "ok", tmp_path)
        await become_primary(w)
        await cut_all_paths(w)
        await w.wait(1, lambda s: s["peer_disk"] == "Outdated" and not s["susp"], "peer fenced and writes resumed")
        assert handler_exits(w.handler_log(1)) == ["7"]
        assert h.fencer.calls == 1 and not w.node(2).alive()
        assert (await w.write(1))["ok"]


async def test_fence_impossible_keeps_writes_frozen(topo: netns.TwoNodes, tmp_path: Path) -> None:
    async with world(topo, tmp_path, "9") as w:
        h = await w.add_host(1, "PRIMARY", "impossible", tmp_path)
        await become_primary(w)
        await cut_all_paths(w)
        await w.wait(1, lambda s: "fencing" in s["susp"] and not s["helpers"] and s["conn"] != "Connected",
                     "the handler gave up")
        assert handler_exits(w.handler_log(1)) == ["1"]
        assert h.fencer.calls == 1
        assert not await h.service.maybe_resume()
        assert await w.write(1, timeout=1.0) == {"ok": False, "frozen": True, "suspended": ["fencing"]}


async def test_daemon_killed_before_the_handler_runs(topo: netns.TwoNodes, tmp_path: Path) -> None:
    async with world(topo, tmp_path, "9") as w:
        # A daemon process that serves fence-peer; SIGKILLed before DRBD needs it (its socket file stays).
        code = textwrap.dedent(f"""
            import asyncio
            from clever_cluster.daemon.control import ControlServer
            async def main():
                async def refuse(args, caller):
                    return {{"verdict": "refused"}}
                srv = ControlServer({str(w.socks[0])!r}, {{"fence-peer": refuse}})
                await srv.start()
                print("ready", flush=True)
                await asyncio.Event().wait()
            asyncio.run(main())
        """)
        daemon = await asyncio.create_subprocess_exec(sys.executable, "-c", code, stdout=asyncio.subprocess.PIPE)
        try:
            assert daemon.stdout is not None and (await daemon.stdout.readline()).strip() == b"ready"
            daemon.send_signal(signal.SIGKILL)
            await daemon.wait()
            assert w.socks[0].exists()
            await become_primary(w)
            await cut_all_paths(w)
            await w.wait(1, lambda s: "fencing" in s["susp"] and not s["helpers"] and s["conn"] != "Connected",
                         "the handler finished")
            assert handler_exits(w.handler_log(1)) == ["1"]
            assert await w.write(1, timeout=1.0) == {"ok": False, "frozen": True, "suspended": ["fencing"]}
        finally:
            if daemon.returncode is None:
                daemon.kill()
                await daemon.wait()


@pytest.mark.parametrize("version", ["9", "8.4"])
async def test_handler_gave_up_then_fence_confirmed_resumes_io(topo: netns.TwoNodes, tmp_path: Path, version: str) -> None:
    async with world(topo, tmp_path, version) as w:
        h = await w.add_host(1, "PRIMARY", "later", tmp_path)
        await become_primary(w)
        await cut_all_paths(w)
        await w.wait(1, lambda s: "fencing" in s["susp"] and not s["helpers"] and s["conn"] != "Connected", "handler gave up")
        assert handler_exits(w.handler_log(1)) == ["1"] and h.service.resumes == 0
        await h.fencer.power_off()  # the coordinator's retry confirms the fence later
        await w.wait(1, lambda s: not s["susp"], "the daemon resumed I/O")
        for _ in range(100):  # drbdadm resume-io may still be returning to the service
            if h.service.resumes:
                break
            await asyncio.sleep(0.05)
        assert h.service.resumes == 1
        assert (await w.write(1))["ok"]


async def test_operator_on_the_standby_during_a_partition_fences_nobody(topo: netns.TwoNodes, tmp_path: Path) -> None:
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    async with world(topo, tmp_path, "9", loop=True) as w:
        active = await w.add_host(1, "PRIMARY", "ok", tmp_path / "")
        standby_dir = tmp_path / "standby"
        standby_dir.mkdir()
        standby = await w.add_host(2, "SECONDARY", "ok", standby_dir)
        active.heartbeat.hold = asyncio.Event()  # node1's outdate request waits while the operator acts
        await become_primary(w)
        await asyncio.to_thread(topo.lab.down, topo.n1.ns, "hb0")
        await w.wait(1, lambda s: "fence-peer" in s["helpers"], "node1's handler running")
        await w.wait(2, lambda s: s["conn"] != "Connected" and s["disk"] == "UpToDate", "node2 sees the partition")
        r = await w.run(2, "drbdadm", "primary", "r0")  # what an operator does before mounting
        assert r.returncode == 11 and "(-7) Refusing to be Primary while peer is not outdated" in r.stderr
        assert handler_exits(w.handler_log(2)) == ["1"]
        dev2 = w.node(2).loop_device
        assert dev2 is not None
        m = await asyncio.to_thread(subprocess.run, ["mount", "-o", "rw", dev2, str(mnt)], capture_output=True, check=False)
        if m.returncode == 0:  # the kernel falls back to a read-only mount of the write-protected device
            try:
                found = await asyncio.to_thread(subprocess.run, ["findmnt", "-no", "OPTIONS", str(mnt)], capture_output=True,
                                                text=True, check=True)
                opts = found.stdout
                assert opts.split(",")[0] == "ro", opts
                with pytest.raises(OSError):
                    (mnt / "written-on-the-standby").write_text("x")
            finally:
                await asyncio.to_thread(subprocess.run, ["umount", str(mnt)], check=False)
        assert standby.fencer.calls == 0 and active.fencer.calls == 0
        active.heartbeat.hold.set()
        await w.wait(1, lambda s: s["peer_disk"] == "Outdated" and not s["susp"], "node1 outdated node2 and resumed")
        assert (await w.state(1))["role"] == "Primary" and w.node(1).alive()
        assert handler_exits(w.handler_log(1)) == ["4"] and active.fencer.calls == 0


async def test_an_outdate_ack_does_not_resume_a_later_freeze(topo: netns.TwoNodes, tmp_path: Path) -> None:
    """Freeze A: the peer is heard on hb1 and outdates its disk (exit 4). The link comes back, the peer
    resyncs to UpToDate, then every path goes: freeze B, whose handler cannot fence (exit 1). The
    daemon's resume check did not run in between (a sampling gap: 8.4 polls /proc/drbd), so freeze A's
    acknowledgement must not release freeze B while the peer holds UpToDate data."""
    async with world(topo, tmp_path, "8.4") as w:
        h = await w.add_host(1, "PRIMARY", "ok", tmp_path)
        h.watcher.cancel()  # no resume check between the two freezes
        h.service.success_grace = 0.5
        await become_primary(w)
        await asyncio.to_thread(topo.lab.down, topo.n1.ns, "hb0")
        await w.wait(1, lambda s: s["peer_disk"] == "Outdated" and not s["susp"], "freeze A: peer outdated, writes resumed")
        assert handler_exits(w.handler_log(1)) == ["4"] and h.service.outdate_ack is not None
        await asyncio.to_thread(topo.lab.up, topo.n1.ns, "hb0")
        await w.wait(2, lambda s: s["conn"] == "Connected" and s["disk"] == "UpToDate", "the peer resynced", timeout=30)
        h.fencer.mode = "later"
        await cut_all_paths(w)
        await w.wait(1, lambda s: "fencing" in s["susp"] and not s["helpers"] and s["conn"] != "Connected",
                     "freeze B: the handler gave up")
        assert handler_exits(w.handler_log(1)) == ["4", "1"]
        assert (await w.state(2))["disk"] == "UpToDate"  # the peer was never outdated for freeze B
        await asyncio.sleep(h.service.success_grace)
        assert not await h.service.maybe_resume()
        assert h.service.resumes == 0
        assert await w.write(1, timeout=1.0) == {"ok": False, "frozen": True, "suspended": ["fencing"]}
