"""The production DRBD adapter, unchanged, against the DRBD simulator (8.4 and 9)."""

from __future__ import annotations

import asyncio
import os
import subprocess
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import IO

import pytest

from clever_cluster.daemon.config import DrbdConfig
from clever_cluster.daemon.drbd import errors
from clever_cluster.daemon.drbd.adapter import DrbdAdapter, OutdateResult, SplitBrainVictim
from clever_cluster.daemon.drbd.model import ConnState, DiskState, DrbdFacts, ReplState, Role
from clever_cluster.sim.drbd.lab import INITIAL_UUID, DrbdPair, SimNode

FAST = {"ping_int": 1.0, "ping_timeout": 0.5}
SAFE = {**FAST, "handlers": {"fence-peer": "/usr/sbin/clevervm fence-peer", "unfence-peer": "/usr/sbin/clevervm unfence-peer"}}


def adapter_for(n: SimNode, **kw: object) -> DrbdAdapter:
    cfg = DrbdConfig(resource="r0", drbdadm=str(kw.pop("drbdadm", n.drbdadm)), drbdsetup=str(n.drbdsetup),
                     proc_drbd=n.proc_drbd, poll_interval=0.1, command_timeout=10.0)
    return DrbdAdapter(cfg)


async def until(a: DrbdAdapter, pred: Callable[[DrbdFacts], bool], timeout: float = 15.0, what: str = "facts") -> DrbdFacts:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not pred(a.facts()):
        left = deadline - loop.time()
        if left <= 0:
            raise AssertionError(f"timed out waiting for {what}; last facts: {a.facts()}")
        await a.wait_change(min(left, 0.2))
    return a.facts()


@pytest.fixture(params=["9", "8.4"])
async def pair(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[DrbdPair]:
    p = DrbdPair(tmp_path / "drbd", request.param, conf=SAFE)
    try:
        await asyncio.to_thread(p.start)
        await asyncio.to_thread(p.wait_connected)
        yield p
    finally:
        await asyncio.to_thread(p.close)


async def test_facts_detection_and_settings(pair: DrbdPair) -> None:
    a = adapter_for(pair.node(1))
    await a.start()
    try:
        f = await until(a, lambda f: f.known and f.generation is not None and f.settings is not None)
        assert f.backend == ("drbd9" if pair.version == "9" else "drbd84")
        assert (f.role, f.peer_role, f.connection, f.disk, f.peer_disk, f.replication) == (
            Role.SECONDARY, Role.SECONDARY, ConnState.CONNECTED, DiskState.UPTODATE, DiskState.UPTODATE, ReplState.ESTABLISHED)
        assert f.settings is not None and f.settings.safe and f.settings.fencing == "resource-and-stonith"
        assert f.current_uuid == INITIAL_UUID and not f.split_brain and not f.io_suspended
    finally:
        await a.close()


async def test_promote_demote_role_and_typed_errors(pair: DrbdPair) -> None:
    a1, a2 = adapter_for(pair.node(1)), adapter_for(pair.node(2))
    await a1.start()
    await a2.start()
    try:
        await until(a1, lambda f: f.known)
        await until(a2, lambda f: f.known)
        await a1.promote()
        assert await a1.role() is Role.PRIMARY
        assert await a1.cstate() is ConnState.CONNECTED
        assert await a1.dstate() == (DiskState.UPTODATE, DiskState.UPTODATE)
        await until(a2, lambda f: f.peer_role is Role.PRIMARY, what="peer Primary seen on node2")
        with pytest.raises(errors.MultiplePrimaries):
            await a2.promote()
        with pytest.raises(errors.RefusedWhileConnected):
            await a2.outdate(timeout=0.3)
        await a1.demote()
        assert await a1.role() is Role.SECONDARY
        await a1.demote()  # idempotent
    finally:
        await a1.close()
        await a2.close()


async def test_outdate_is_retried_until_the_peer_is_gone(pair: DrbdPair) -> None:
    a2 = adapter_for(pair.node(2))
    a2.backend = "drbd9" if pair.version == "9" else "drbd84"
    task = asyncio.create_task(a2.outdate(timeout=20))
    await asyncio.sleep(0.5)
    assert not task.done()  # still Connected: -6, retried
    r = await asyncio.to_thread(pair.node(1).run, "drbdadm", "disconnect", "r0")
    assert r.returncode == 0
    assert await asyncio.wait_for(task, 20) is OutdateResult.OUTDATED
    assert pair.node(2).state()["disk"] == "Outdated"
    with pytest.raises(errors.NoUpToDateData):
        await a2.promote()


async def test_restart_with_backoff_clears_the_model_and_close_kills_the_child(pair: DrbdPair) -> None:
    a = adapter_for(pair.node(1))
    await a.start()
    try:
        await until(a, lambda f: f.known)
        child = a._child
        await asyncio.to_thread(pair.node(1).kill)
        f = await until(a, lambda f: not f.known, what="facts unknown once DRBD is gone")
        assert f.role is Role.UNKNOWN and f.disk is None
        await asyncio.to_thread(pair.node(1).start)
        await until(a, lambda f: f.known and f.connection is ConnState.CONNECTED, what="facts back")
        if pair.version == "9":
            assert child is not None and child.returncode is not None  # the old child was replaced
    finally:
        await a.close()
    if pair.version == "9":
        assert a._child is None


async def test_split_brain_detected_and_recovered(tmp_path: Path) -> None:
    for version in ("9", "8.4"):
        p = DrbdPair(tmp_path / version, version, conf={**FAST, "fencing": "dont-care"})
        a1 = a2 = None
        try:
            await asyncio.to_thread(p.start)
            await asyncio.to_thread(p.wait_connected)
            a1, a2 = adapter_for(p.node(1)), adapter_for(p.node(2))
            await a1.start()
            await a2.start()
            await until(a1, lambda f: f.known)
            await until(a2, lambda f: f.known)
            await a1.disconnect()
            await a2.disconnect()
            for n in (p.node(1), p.node(2)):
                assert (await asyncio.to_thread(n.run, "drbdadm", "primary", "--force", "r0")).returncode == 0
                assert (await asyncio.to_thread(n.write, 8))["ok"]
            assert not a1.facts().split_brain
            await a1.connect()
            await a2.connect()
            for a in (a1, a2):
                f = await until(a, lambda f: f.split_brain and f.connection is ConnState.STANDALONE,
                                what=f"split brain on DRBD {version}")
                assert f.split_brain_evidence
            with pytest.raises(errors.DrbdError):
                await a2.discard_my_data_and_connect(SplitBrainVictim("test", "node2 loses"))  # still Primary
            await a2.demote()
            await until(a2, lambda f: f.role is Role.SECONDARY)
            await a2.discard_my_data_and_connect(SplitBrainVictim("test", "node2 loses"))
            await a1.disconnect()
            await a1.connect()
            for a in (a1, a2):
                await until(a, lambda f: f.connection is ConnState.CONNECTED and f.disk is DiskState.UPTODATE
                            and f.replication is ReplState.ESTABLISHED and not f.split_brain, what="recovered")
        finally:
            for a in (a1, a2):
                if a is not None:
                    await a.close()
            await asyncio.to_thread(p.close)


async def test_unsafe_settings_named_and_reread_on_reconnect(tmp_path: Path) -> None:
    p = DrbdPair(tmp_path / "u", "9", conf={**FAST, "protocol": "A", "auto_promote": True})
    count = tmp_path / "dumps"
    wrapper = tmp_path / "drbdadm"
    try:
        await asyncio.to_thread(p.start)
        await asyncio.to_thread(p.wait_connected)
        n1 = p.node(1)
        wrapper.write_text(f'#!/bin/sh\n[ "$1" = dump ] && echo x >> {count}\nexec {n1.drbdadm} "$@"\n')
        wrapper.chmod(0o755)
        a = adapter_for(n1, drbdadm=wrapper)
        await a.start()
        try:
            f = await until(a, lambda f: f.known and f.settings is not None)
            assert f.settings is not None
            named = {(i.setting, i.source) for i in f.settings.issues}
            assert {("net.protocol", "running"), ("options.auto-promote", "running"), ("net.protocol", "config"),
                    ("handlers.fence-peer", "config")} <= named
            before = len(count.read_text().split())
            assert (await asyncio.to_thread(p.node(2).run, "drbdadm", "disconnect", "r0")).returncode == 0
            await until(a, lambda f: f.connection is not ConnState.CONNECTED)
            assert (await asyncio.to_thread(p.node(2).run, "drbdadm", "connect", "r0")).returncode == 0
            await until(a, lambda f: f.connection is ConnState.CONNECTED)
            await until(a, lambda f: len(count.read_text().split()) > before, what="settings re-read on reconnect")
        finally:
            await a.close()
    finally:
        await asyncio.to_thread(p.close)


async def test_fencing_suspension_and_running_handler_are_facts(tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    script = tmp_path / "fence.sh"
    script.write_text(f"#!/bin/sh\nwhile [ ! -e {gate} ]; do sleep 0.05; done\nexit 4\n")
    script.chmod(0o755)
    p = DrbdPair(tmp_path / "f", "9", conf={**FAST, "handlers": {"fence-peer": str(script)}})
    try:
        await asyncio.to_thread(p.start)
        await asyncio.to_thread(p.wait_connected)
        a = adapter_for(p.node(1))
        await a.start()
        try:
            await until(a, lambda f: f.known)
            await a.promote()
            await asyncio.to_thread(p.node(2).kill)  # the process dies: its TCP connection closes at once
            f = await until(a, lambda f: f.fence_peer_running, what="fence-peer running")
            assert f.suspended == {"fencing"} and f.io_suspended and f.peer_disk is DiskState.DUNKNOWN
            await asyncio.to_thread(gate.write_text, "go")
            await until(a, lambda f: not f.fence_peer_running and not f.io_suspended and f.peer_disk is DiskState.OUTDATED,
                        what="handler exit 4 obeyed")
        finally:
            await a.close()
    finally:
        await asyncio.to_thread(p.close)


async def test_missing_binaries_are_unknown_not_a_crash(tmp_path: Path) -> None:
    cfg = DrbdConfig(resource="r0", drbdadm=str(tmp_path / "nope"), drbdsetup=str(tmp_path / "nope"),
                     proc_drbd=tmp_path / "proc", poll_interval=0.1)
    a = DrbdAdapter(cfg)
    await a.start()
    try:
        f = await until(a, lambda f: f.error is not None and "not found" in f.error)
        assert not f.known
        with pytest.raises(errors.DrbdUnavailable):
            await a.promote()
    finally:
        await a.close()


def test_no_events2_process_left(tmp_path: Path) -> None:
    out = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True, check=True).stdout
    mine = [ln for ln in out.splitlines() if str(tmp_path.parent.parent) in ln and "events2" in ln]
    assert mine == [], mine
    assert os.path.exists("/proc/self")


async def test_status_json_one_shot(pair: DrbdPair) -> None:
    a = adapter_for(pair.node(1))
    a.backend = "drbd9" if pair.version == "9" else "drbd84"
    if pair.version == "8.4":
        with pytest.raises(errors.DrbdError):
            await a.status_json()  # no --json with an 8.4 kernel
        return
    st = await a.status_json()
    assert st.role is Role.SECONDARY and st.devices[0]["disk-state"] == "UpToDate"
    assert st.connections[0]["peer_devices"][0]["peer-disk-state"] == "UpToDate"


async def test_a_stream_missing_keys_is_unknown_never_stale(tmp_path: Path) -> None:
    """drbdsetup printing a resource without its role: the facts must say unknown, not keep guessing."""
    fake = tmp_path / "drbdsetup"
    fake.write_text("#!/bin/sh\n"
                    'if [ "$1" = events2 ]; then\n'
                    "  echo 'exists resource name:r0 suspended:no'\n"
                    "  echo 'exists device name:r0 volume:0 minor:0 disk:UpToDate'\n"
                    "  echo 'exists -'\n  exec sleep 60\nfi\nexit 10\n")
    fake.chmod(0o755)
    adm = tmp_path / "drbdadm"
    adm.write_text("#!/bin/sh\nexit 10\n")
    adm.chmod(0o755)
    a = DrbdAdapter(DrbdConfig(resource="r0", backend="drbd9", drbdadm=str(adm), drbdsetup=str(fake),
                               proc_drbd=tmp_path / "none", poll_interval=0.1))
    await a.start()
    try:
        f = await until(a, lambda f: f.error is not None and "role" in f.error, what="the missing key reported")
        assert not f.known and f.role is Role.UNKNOWN
    finally:
        await a.close()


async def test_resync_progress_and_out_of_sync_facts(tmp_path: Path) -> None:
    for version in ("9", "8.4"):
        p = DrbdPair(tmp_path / version, version, conf={**FAST, "fencing": "dont-care", "resync_kib_per_s": 2048})
        a2 = None
        try:
            await asyncio.to_thread(p.start)
            await asyncio.to_thread(p.wait_connected)
            n1, n2 = p.node(1), p.node(2)
            assert (await asyncio.to_thread(n1.run, "drbdadm", "primary", "r0")).returncode == 0
            assert (await asyncio.to_thread(n2.run, "drbdadm", "disconnect", "r0")).returncode == 0
            assert (await asyncio.to_thread(n1.write, 6144))["replicated"] is False
            a2 = adapter_for(n2)
            await a2.start()
            await until(a2, lambda f: f.known)
            assert (await asyncio.to_thread(n2.run, "drbdadm", "connect", "r0")).returncode == 0
            seen: list[float] = []

            def progress(f: DrbdFacts, seen: list[float] = seen) -> bool:
                if f.replication is ReplState.SYNCTARGET and f.resync is not None:
                    seen.append(f.resync.done_percent)
                    assert f.disk is DiskState.INCONSISTENT
                return len({round(x) for x in seen if 0 < x < 100}) >= 2

            await until(a2, progress, 20, f"resync progress on {version}")
            await until(a2, lambda f: f.replication is ReplState.ESTABLISHED and f.disk is DiskState.UPTODATE, 20)
            assert seen == sorted(seen)
        finally:
            if a2 is not None:
                await a2.close()
            await asyncio.to_thread(p.close)


class Events2Script:
    """A drbdsetup whose events2 prints what the test writes (a FIFO): DRBD's lines, in DRBD's order."""

    def __init__(self, tmp_path: Path) -> None:
        self.fifo = tmp_path / "events2"
        os.mkfifo(self.fifo)
        setup, adm = tmp_path / "drbdsetup", tmp_path / "drbdadm"
        setup.write_text(f'#!/bin/sh\n[ "$1" = events2 ] && exec cat {self.fifo}\nexit 10\n')
        adm.write_text("#!/bin/sh\nexit 0\n")  # disconnect, connect...: accepted
        for f in (setup, adm):
            f.chmod(0o755)
        self.adapter = DrbdAdapter(DrbdConfig(resource="r0", backend="drbd9", drbdadm=str(adm), drbdsetup=str(setup),
                                              proc_drbd=tmp_path / "none", poll_interval=0.1))
        self._w: IO[str] | None = None

    async def __aenter__(self) -> Events2Script:
        await self.adapter.start()
        self._w = await asyncio.to_thread(open, self.fifo, "w")  # returns once events2 reads the FIFO
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._w is not None:
            await asyncio.to_thread(self._w.close)
        await self.adapter.close()

    async def send(self, *lines: str) -> None:
        w = self._w
        assert w is not None
        await asyncio.to_thread(lambda: (w.write("".join(f"{ln}\n" for ln in lines)), w.flush()))

    async def die_while_printing(self, partial: str) -> None:
        """events2 ends in the middle of a line (killed): the rest of the line never comes."""
        w, self._w = self._w, None
        assert w is not None
        await asyncio.to_thread(lambda: (w.write(partial), w.close()))


def _fixture_lines(name: str) -> list[str]:
    from .drbd_fixtures import fixture_dir
    return (fixture_dir() / name).read_text().splitlines()


@pytest.mark.parametrize("variant", ["9.0 order", "no helper events"])
async def test_split_brain_after_our_own_disconnect_and_an_operator_connect(tmp_path: Path, variant: str) -> None:
    """The daemon disconnected DRBD itself (DESIGN 4.4: a dead peer still shown Connected); later an operator
    reconnected with drbdadm and the handshake found split brain. DRBD 9.0 logs conn( Connecting -> Connected )
    before drbd_sync_handshake, so events2 shows Connected, then the split-brain helpers, then Disconnecting
    and StandAlone; with the usermode helper disabled there are no helper events at all."""
    sb = _fixture_lines("events2_9_split_brain_detected_composed.txt")
    dump, path, helpers, tail = sb[:5], sb[5], sb[6:10], sb[10:]
    conn = "change connection name:r0 peer-node-id:1 conn-name:remote-host"
    async with Events2Script(tmp_path) as s:
        a = s.adapter
        await s.send(*dump)
        await until(a, lambda f: f.known and f.connection is ConnState.CONNECTING)
        await a.disconnect()
        await s.send(f"{conn} connection:Disconnecting", f"{conn} connection:StandAlone")
        await until(a, lambda f: f.connection is ConnState.STANDALONE)
        assert not a.facts().split_brain  # our own disconnect
        await s.send(f"{conn} connection:Unconnected", f"{conn} connection:Connecting", path)
        if variant == "9.0 order":
            await s.send(f"{conn} connection:Connected role:Secondary")
            await until(a, lambda f: f.connection is ConnState.CONNECTED)
            await s.send(*helpers)
        else:
            await until(a, lambda f: f.connection is ConnState.CONNECTING)
        await s.send(*tail)
        f = await until(a, lambda f: f.connection is ConnState.STANDALONE, what="StandAlone after the handshake")
        assert f.split_brain
        if variant == "9.0 order":
            assert f.split_brain_evidence == "DRBD called its split-brain handler"


async def test_a_second_connection_is_not_taken_for_the_peer(tmp_path: Path) -> None:
    """A third node (a diskless tiebreaker, a DR site): DRBD loses node-c while node-b stays Connected. The
    adapter cannot tell which connection is the cluster's peer, so it must not report Connected."""
    q = _fixture_lines("events2_9_quorum_lost_primary_suspended_composed.txt")
    dump = q[:7]
    lost_c = [ln for ln in q[7:] if "peer-node-id:2" in ln and not ln.startswith(("call", "response"))]
    async with Events2Script(tmp_path) as s:
        a = s.adapter
        await s.send(*dump, *lost_c)
        f = await until(a, lambda f: f.error is not None and "connections" in f.error, what="the topology refused")
        assert not f.known and f.connection is None


async def test_every_volume_counts_for_the_disk_states(tmp_path: Path) -> None:
    """drbd.volume names the filesystem's volume, but DRBD promotes the whole resource: an Inconsistent
    volume 1 (or its peer's) is an Inconsistent resource for S3 and S8."""
    two = _fixture_lines("events2_9_now_two_volumes_ug.txt")
    async with Events2Script(tmp_path) as s:
        a = s.adapter
        await s.send(*two)
        await until(a, lambda f: f.known and f.disk is DiskState.UPTODATE and f.peer_disk is DiskState.UPTODATE)
        await s.send("change peer-device name:r0 peer-node-id:1 conn-name:remote-host volume:1 replication:SyncSource "
                     "peer-disk:Inconsistent")
        f = await until(a, lambda f: f.peer_disk is not DiskState.UPTODATE, what="volume 1's peer disk counted")
        assert f.peer_disk is DiskState.INCONSISTENT and f.disk is DiskState.UPTODATE
        await s.send("change connection name:r0 peer-node-id:1 conn-name:remote-host connection:Connecting role:Unknown",
                     "change device name:r0 volume:1 minor:8 disk:Outdated")
        f = await until(a, lambda f: f.disk is not DiskState.UPTODATE, what="volume 1's disk counted")
        assert f.disk is DiskState.OUTDATED and f.connection is ConnState.CONNECTING


async def test_a_line_cut_short_by_a_dying_events2_is_not_read(tmp_path: Path) -> None:
    """drbdsetup events2 killed in the middle of a line: 'quorum:no' arrives as 'quorum:n', which DRBD's
    boolean rule would read as yes. Only whole lines are DRBD's output."""
    q = _fixture_lines("events2_9_quorum_lost_primary_suspended_composed.txt")
    three = q[:7]
    dump = [ln for ln in three if "peer-node-id:2" not in ln]  # one peer, as clever-cluster runs it
    seen: list[DrbdFacts] = []
    async with Events2Script(tmp_path) as s:
        a = s.adapter
        a.on_change = seen.append
        await s.send(*dump, "change device name:r0 volume:0 minor:0 backing_dev:/dev/vg0/r0 disk:UpToDate client:no "
                            "open:yes quorum:no")
        await until(a, lambda f: f.quorum is False)
        await s.die_while_printing("change device name:r0 volume:0 minor:0 backing_dev:/dev/vg0/r0 disk:Outdated "
                                   "client:no open:yes quorum:n")
        await until(a, lambda f: not f.known, what="the stream's end")
    after = seen[next(i for i, f in enumerate(seen) if f.quorum is False):]
    assert all(f.quorum is not True for f in after if f.known), [f.quorum for f in after]


async def test_settings_changed_without_a_reconnect_are_noticed(tmp_path: Path) -> None:
    """drbdadm adjust (or net-options --allow-two-primaries=yes, as done for live migration) changes the
    running net options of a live DRBD 9 connection: no reconnect, yet S9 no longer holds."""
    p = DrbdPair(tmp_path / "s", "9", conf=SAFE)
    try:
        await asyncio.to_thread(p.start)
        await asyncio.to_thread(p.wait_connected)
        n1, n2 = p.node(1), p.node(2)
        count, wrapper = tmp_path / "dumps", tmp_path / "drbdadm"
        wrapper.write_text(f'#!/bin/sh\n{n1.drbdadm} "$@"\nrc=$?\n[ "$1" = dump ] && echo x >> {count}\nexit $rc\n')
        wrapper.chmod(0o755)
        a = DrbdAdapter(DrbdConfig(resource="r0", drbdadm=str(wrapper), drbdsetup=str(n1.drbdsetup),
                                   proc_drbd=n1.proc_drbd, poll_interval=0.1, command_timeout=10.0), settings_interval=0.5)
        await a.start()
        try:
            await until(a, lambda f: f.known and f.settings is not None and f.settings.safe)
            # Read at start and again on the first Connected; nothing reads the configuration after that.
            await until(a, lambda f: count.exists() and len(count.read_text().split()) >= 2, what="the first two reads")
            for n in (n1, n2):  # the operator runs it on both nodes
                await asyncio.to_thread(n.api, what="conf", set={"allow_two_primaries": True})
            assert (await asyncio.to_thread(n1.run, "drbdadm", "primary", "r0")).returncode == 0
            assert (await asyncio.to_thread(n2.run, "drbdadm", "primary", "r0")).returncode == 0  # DRBD now allows it
            f = await until(a, lambda f: f.settings is not None and not f.settings.safe, what="the change noticed")
            assert f.settings is not None and {i.setting for i in f.settings.issues} == {"net.allow-two-primaries"}
            assert f.connection is ConnState.CONNECTED
        finally:
            await a.close()
    finally:
        await asyncio.to_thread(p.close)
