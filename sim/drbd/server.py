"""The DRBD simulator process: one per simulated node, holding one resource.

``python -m clever_cluster.sim.drbd.server CONFIG.json`` runs until killed,
like the kernel module it stands in for: it outlives the daemon. It serves
the ``drbdadm``/``drbdsetup`` front ends and a small test API on a Unix
socket, talks to its twin over TCP on the replication link address (so
cutting that link really disconnects them), keeps the fake ``/proc/drbd``
file current, runs the configured handlers with DRBD's environment, and
keeps the Secondary's loop device read-only and the Primary's writable.

Invariants:
- Every state change goes through :meth:`Node.publish`, which emits the
  events2 ``change`` lines, rewrites /proc/drbd and persists the metadata, in
  that one place.
- A peer that stops answering is declared lost only after ``ping_int`` +
  ``ping_timeout`` without any packet (DRBD's own detection).
- With ``fencing resource-and-stonith`` a Primary that loses its peer freezes
  writes before anything else and stays frozen until the fence-peer handler
  exits 3, 4, 5 or 7, ``resume-io``, or the peer connects again; a handler
  started before that reconnect has its exit code ignored.
- A graceful disconnect between a Primary and a Secondary (``drbdadm
  disconnect``/``down``, with fencing on) outdates the Secondary's disk first,
  as DRBD's ``conn_try_disconnect`` does: the Primary then sees the peer's
  disk Outdated, does not freeze and runs no fence-peer handler.
- With ``transitions`` configured, every change of role, disk, connection and
  suspension and every acknowledged write is appended to the lab's
  transition log (``sim.nodelab.transitions``) with ``time.monotonic()``, in
  :meth:`Node.publish` and :meth:`Node.write`; a promotion is stamped when
  the device became writable, before the role changed.
- What the disk holds is modelled as the set of write ids it received
  (``data_file``, kept across restarts like the disk itself): a write is
  held by the writer and, once replicated, by the peer; a finished resync
  gives the target exactly the source's set; a failed disk holds nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import json
import os
import random
import signal
import struct
import sys
import time
from pathlib import Path
from typing import Any

from ..nodelab.transitions import Recorder, WriteSet
from . import render
from .state import Failure, Handshake, Meta, Refused, attach_disk, decide, new_uuid, promotion_info

BLKROSET, BLKFLSBUF = 0x125D, 0x1261
CONF_DEFAULTS: dict[str, Any] = {
    "protocol": "C", "fencing": "resource-and-stonith", "allow_two_primaries": False, "auto_promote": False,
    "become_primary_on": None, "after_sb_0pri": "disconnect", "after_sb_1pri": "disconnect", "after_sb_2pri": "disconnect",
    "handlers": {}, "ping_int": 1.0, "ping_timeout": 0.5, "connect_int": 0.3, "resync_kib_per_s": 1_000_000,
}


def log(msg: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} drbdsim: {msg}", file=sys.stderr, flush=True)


class Link:
    """One established TCP connection to the twin (JSON lines)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.last_rx = time.monotonic()
        self.closed = False

    def send(self, msg: dict[str, Any]) -> None:
        if not self.closed:
            self.writer.write(json.dumps(msg).encode() + b"\n")

    async def recv(self) -> dict[str, Any] | None:
        line = await self.reader.readline()
        if not line:
            return None
        self.last_rx = time.monotonic()
        msg: dict[str, Any] = json.loads(line)
        return msg

    def close(self) -> None:
        self.closed = True
        with contextlib.suppress(Exception):
            self.writer.close()


class Subscriber:
    """One ``drbdsetup events2`` front end."""

    def __init__(self, statistics: bool) -> None:
        self.queue: asyncio.Queue[str | None] = asyncio.Queue()
        self.statistics = statistics
        self.path_seen = False


class Node:
    def __init__(self, cfg: dict[str, Any]) -> None:
        self.cfg = cfg
        self.conf: dict[str, Any] = {**CONF_DEFAULTS, **cfg.get("drbd_conf", {})}
        self.rng = random.Random()
        self.meta_path = Path(cfg["meta_file"])
        if self.meta_path.exists():
            self.meta = Meta.from_json(json.loads(self.meta_path.read_text()))
        else:
            self.meta = Meta(current=int(cfg.get("initial_uuid", "0"), 16) or new_uuid(self.rng))
        self.role = "Secondary"
        self.disk = attach_disk(self.meta)
        self.conn = "StandAlone" if cfg.get("start_standalone") else "Connecting"
        self.peer_role, self.repl = "Unknown", "Off"
        self.peer_disk = "Outdated" if self.meta.peer_outdated else "DUnknown"  # MDF_PEER_OUT_DATED at attach
        self.susp: set[str] = set()
        self.open = False
        self.path_seen = False
        self.resync: dict[str, int] | None = None
        self.stats = {"ns": 0, "nr": 0, "dw": 0, "dr": 0}
        self.discard_next = False
        self.new_uuid_pending = False
        self.connects = 0  # handshakes that ended Connected (DRBD's connect_cnt)
        self.link: Link | None = None
        self.subscribers: list[Subscriber] = []
        self.helpers: set[str] = set()
        self.changed = asyncio.Event()
        self._promote_waiters: dict[int, asyncio.Future[bool]] = {}
        self._write_waiters: dict[int, asyncio.Future[bool]] = {}
        self._seq = 0
        self._promoting = False
        # We told the peer it may promote and it has not reported the outcome yet (DRBD 9 holds the
        # cluster-wide state change until commit or abort): no promotion of our own meanwhile.
        self._peer_promoting = False
        self._resync_task: asyncio.Task[None] | None = None
        self._fence_task: asyncio.Task[int] | None = None
        self._peer_outdated_itself = False  # the peer's last word was a graceful disconnect with its disk Outdated
        self.boot = os.urandom(4).hex()  # write ids of this run never collide with an earlier one's
        self._wseq = 0
        self.data_path = Path(cfg.get("data_file") or self.meta_path.with_name("data.json"))
        self.data = WriteSet(json.loads(self.data_path.read_text()) if self.data_path.exists() else None)
        self.recorder = Recorder(cfg["transitions"], "drbd") if cfg.get("transitions") else None
        self._writable_at: float | None = None
        self._last_view = self.view()
        self.publish()
        self._loop_ro(self.role != "Primary")

    # ------------------------------------------------------------------ view and publishing

    def view(self) -> dict[str, Any]:
        c = self.cfg
        return {
            "version": c["version"], "resource": c["resource"], "minor": c.get("minor", 0), "volume": c.get("volume", 0),
            "node": c["node"], "node_id": c["node_id"], "peer": c["peer"], "peer_id": c["peer_node_id"],
            "local_addr": c["local_addr"], "peer_addr": c["peer_addr"], "port": c["port"],
            "role": self.role, "disk": self.disk, "conn": self.conn, "peer_role": self.peer_role,
            "peer_disk": self.peer_disk, "repl": self.repl, "susp": sorted(self.susp), "open": self.open,
            "established": self.link is not None and self.conn == "Connected", "path_seen": self.path_seen,
            "backing_dev": c.get("loop_device"), "oos_kib": self.meta.oos_kib,
            "resync": dict(self.resync) if self.resync else None, "stats": dict(self.stats),
            "meta": self.meta.to_json(), "conf": self.conf, "size_kib": c.get("size_kib", 65536),
            "promotion": promotion_info(self.role, self.disk, self.peer_role, self.peer_disk),
            "helpers": sorted(self.helpers), "writes_held": self.data.count(),
        }

    def record(self, kind: str, value: Any = None, *, t: float | None = None, **fields: Any) -> None:
        if self.recorder is not None:
            self.recorder.record(self.cfg["node"], kind, value, t=t, resource=self.cfg["resource"], **fields)

    def _record_changes(self, old: dict[str, Any], new: dict[str, Any]) -> None:
        if old["role"] != new["role"]:
            if new["role"] == "Primary":
                self.record("role", "Primary", t=self._writable_at, held=self.data.to_json())
            else:
                self.record("role", new["role"])
        for key in ("disk", "conn", "susp", "peer_disk", "peer_role"):
            if old[key] != new[key]:
                self.record(key, new[key])

    def publish(self) -> None:
        new = self.view()
        self._record_changes(self._last_view, new)
        for sub in self.subscribers:
            for ln in render.changes(self._last_view, new, sub.statistics):
                if ln.startswith("change path ") and not sub.path_seen:
                    ln = "create" + ln[len("change"):]  # this subscriber never saw the path
                sub.path_seen = sub.path_seen or " path " in ln
                sub.queue.put_nowait(ln)
        self._last_view = new
        self._persist()
        self.changed.set()
        self.changed = asyncio.Event()

    def emit(self, line: str) -> None:
        for sub in self.subscribers:
            sub.queue.put_nowait(line)

    def _persist(self) -> None:
        _atomic(self.meta_path, json.dumps(self.meta.to_json()))
        _atomic(Path(self.cfg["proc_drbd"]), render.proc_drbd(self._last_view))

    # ------------------------------------------------------------------ loop device

    def _loop_ro(self, ro: bool) -> None:
        dev = self.cfg.get("loop_device")
        if not dev:
            return
        fd = os.open(dev, os.O_RDONLY)
        try:
            fcntl.ioctl(fd, BLKROSET, struct.pack("i", 1 if ro else 0))
            if not ro:
                fcntl.ioctl(fd, BLKFLSBUF, 0)  # drop blocks cached while the peer wrote (lab.md section 7)
        finally:
            os.close(fd)

    def device_busy(self) -> bool:
        dev = self.cfg.get("loop_device")
        return bool(dev) and device_busy(str(dev))

    async def watch_open(self) -> None:
        while True:
            await asyncio.sleep(0.3)
            busy = self.device_busy()
            if busy != self.open:
                self.open = busy
                self.publish()

    # ------------------------------------------------------------------ handlers

    def handler_env(self) -> dict[str, str]:
        c = self.cfg
        env = {**os.environ, **c.get("handler_env", {}), "DRBD_RESOURCE": c["resource"], "DRBD_MINOR": str(c.get("minor", 0)),
               "DRBD_VOLUME": str(c.get("volume", 0)), "DRBD_CONF": "/etc/drbd.conf", "DRBD_PEER_ADDRESS": c["peer_addr"],
               "DRBD_PEER_AF": "ipv4", "DRBD_BACKING_DEV": c.get("loop_device") or "none"}
        if c["version"] == "8.4":
            env.update({"DRBD_PEER": c["peer"], "DRBD_PEERS": c["peer"]})
        else:
            env.update({"DRBD_PEER_NODE_ID": str(c["peer_node_id"]), "DRBD_MY_NODE_ID": str(c["node_id"]),
                        f"DRBD_NODE_ID_{c['peer_node_id']}": c["peer"], f"DRBD_NODE_ID_{c['node_id']}": c["node"],
                        "DRBD_CSTATE": self.conn, "DRBD_MY_ADDRESS": c["local_addr"], "DRBD_MY_AF": "ipv4",
                        "UP_TO_DATE_NODES": f"0x{(1 << c['node_id'] if self.disk == 'UpToDate' else 0):08X}"})
        return env

    async def run_helper(self, name: str) -> int:
        """Run a handler as the kernel does: call/response events, status = exit << 8."""
        v = self.view()
        self.helpers.add(name)
        self.emit(render.helper_line(v, name, None))
        cmd = (self.conf.get("handlers") or {}).get(name)
        code = 0
        status = 0
        if cmd:
            log(f"running {name} handler: {cmd}")
            proc = await asyncio.create_subprocess_exec("/bin/sh", "-c", cmd, env=self.handler_env(),
                                                        stdin=asyncio.subprocess.DEVNULL)
            rc = await proc.wait()
            code = rc if rc >= 0 else 0
            status = (rc << 8) if rc >= 0 else -rc
            log(f"{name} handler exited {rc}")
        self.helpers.discard(name)
        self.emit(render.helper_line(self.view(), name, status))
        return code

    async def fence_peer(self) -> int:
        connects = self.connects
        code = await self.run_helper("fence-peer")
        if self.connects != connects:
            # DRBD compares its connect count: an answer about a connection that came back is void.
            log(f"ignoring fence-peer exit code {code}: the connection was re-established meanwhile")
            return code
        if code in (4, 7) or (code == 5 and self.disk == "UpToDate"):
            self.peer_disk, self.meta.peer_outdated = "Outdated", True
        elif code == 3:
            self.peer_disk = "Inconsistent"
        elif code == 6:
            self.disk, self.meta.disk = "Outdated", "Outdated"
        if code in (3, 4, 5, 7):
            self.susp.discard("fencing")
        else:
            log(f"fence-peer helper broken, returned {code}; I/O stays as it is")
        self.publish()
        return code

    def _unfence(self) -> None:
        """The peer is UpToDate again. Only DRBD 9 has an unfence-peer helper; an 8.4 kernel tells
        the fencing node nothing (8.4 unfences with after-resync-target, run on the sync target)."""
        if self.cfg["version"] != "8.4":
            asyncio.get_running_loop().create_task(self.run_helper("unfence-peer"))

    def fencing_on(self) -> bool:
        return self.conf["fencing"] in ("resource-only", "resource-and-stonith")

    # ------------------------------------------------------------------ commands

    async def primary(self, force: bool = False) -> None:
        if self.role == "Primary":
            return
        if self.conn == "Connected":
            if (self.peer_role == "Primary" or self._peer_promoting) and not self.conf["allow_two_primaries"]:
                raise Refused(-1)
            if self.disk not in ("UpToDate", "Inconsistent"):
                raise Refused(-2)
            self._promoting = True
            try:
                ok = await self._ask_peer_promote()
            finally:
                self._promoting = False
            if not ok:
                self._send_state()  # the abort: a peer that granted stops waiting for our outcome
                raise Refused(-1)
        elif not force:
            if self.disk not in ("UpToDate", "Consistent"):
                raise Refused(-2)
            if self.fencing_on() and self.peer_disk in ("DUnknown", "Consistent", "UpToDate"):
                if self._fence_task is not None and not self._fence_task.done():
                    await asyncio.shield(self._fence_task)
                else:
                    await self.fence_peer()
                if self.disk == "Outdated":
                    raise Refused(-2)
                if self.peer_disk not in ("Outdated", "Inconsistent"):
                    raise Refused(-7)
            elif self.disk == "Consistent":
                raise Refused(-2)
        if self.disk == "Consistent" or force:
            self.disk = self.meta.disk = "UpToDate"
        self._writable_at = time.monotonic()
        self._loop_ro(False)
        self.role = "Primary"
        self.meta.was_primary = True
        if self.conn != "Connected":
            if self.cfg["version"] == "8.4":
                self.meta.rotate(self.rng, True)
            else:
                self.new_uuid_pending = True
        self._send_state()
        self.publish()

    async def _ask_peer_promote(self) -> bool:
        if self.link is None:
            return False
        self._seq += 1
        fut: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._promote_waiters[self._seq] = fut
        self.link.send({"t": "promote_req", "id": self._seq})
        try:
            return await asyncio.wait_for(fut, 5.0)
        except TimeoutError:
            return False
        finally:
            self._promote_waiters.pop(self._seq, None)

    async def secondary(self) -> None:
        if self.role != "Primary":
            return
        for _ in range(20):  # an unmount that just returned may release the device a moment later
            if not self.device_busy():
                break
            await asyncio.sleep(0.05)
        else:
            raise Refused(-12, [f"/dev/drbd{self.cfg.get('minor', 0)} ({self.cfg.get('loop_device')}) is mounted or opened exclusively"])
        self.role = "Secondary"
        self._loop_ro(True)
        self._send_state()
        self.publish()

    async def outdate(self) -> None:
        if self.conn == "Connected":
            raise Refused(-6)
        if self.role == "Primary":
            raise Refused(-2)
        if self.disk == "Outdated":
            return
        if self.disk not in ("UpToDate", "Consistent"):
            raise Refused(-16)
        self.disk = self.meta.disk = "Outdated"
        self.publish()

    async def connect(self, discard: bool) -> None:
        if self.conn != "StandAlone":
            raise Failure(125, "Device has a net-config (use disconnect first)")
        if discard and self.role == "Primary":
            raise Failure(123, "--discard-my-data not allowed when primary.")
        self.discard_next = discard
        self.conn = "Connecting"
        self.publish()

    async def disconnect(self, graceful: bool = True) -> None:
        """``drbdadm disconnect``; ``graceful=False`` (test API) drops the connection the way a crash or a
        cut cable looks to the peer: no goodbye, so no outdating either."""
        if self.conn in ("StandAlone", "Disconnecting"):
            return
        link = self.link
        # DRBD's conn_try_disconnect with fencing on: between a Primary and a Secondary, the
        # Secondary's disk is marked Outdated as part of the disconnect (the Primary refuses a plain
        # one, SS_CW_FAILED_BY_PEER, and the Secondary retries outdating itself; a disconnecting
        # Primary marks its peer Outdated). So the Primary neither freezes nor runs fence-peer.
        outdate_secondary = (graceful and self.conn == "Connected" and self.fencing_on()
                             and {self.role, self.peer_role} == {"Primary", "Secondary"})
        self.conn = "Disconnecting"  # from now on a dropped link stays down (no re-dial)
        if outdate_secondary and self.role == "Secondary" and self.disk in ("UpToDate", "Consistent"):
            self.disk = self.meta.disk = "Outdated"
        self.publish()
        if link is not None and graceful:
            link.send({"t": "bye", "outdated": outdate_secondary})
            with contextlib.suppress(Exception):
                await asyncio.wait_for(link.writer.drain(), 1.0)
        self._drop_link("administrative disconnect", final="StandAlone")
        if outdate_secondary and self.role == "Primary":
            self.peer_disk, self.meta.peer_outdated = "Outdated", True
            self.publish()

    async def resume_io(self) -> None:
        self.susp.discard("fencing")
        self.susp.discard("user")
        self.publish()

    async def suspend_io(self) -> None:
        self.susp.add("user")
        self.publish()

    def _save_data(self) -> None:
        _atomic(self.data_path, json.dumps(self.data.to_json()))

    def _hold(self, wid: str) -> None:
        if self.disk != "Diskless":
            self.data.add(wid)
            self._save_data()

    def _acked(self, wid: str, replicated: bool) -> dict[str, Any]:
        self.record("write_ack", wid, id=wid, replicated=replicated)
        return {"ok": True, "replicated": replicated, "id": wid}

    async def write(self, kib: int, timeout: float) -> dict[str, Any]:
        """The VM wrote ``kib`` KiB: replicate, or track it as out of sync, or wait while frozen."""
        deadline = time.monotonic() + timeout
        self._wseq += 1
        wid = f"{self.cfg['node']}.{self.boot}#{self._wseq}"
        while True:
            if self.role != "Primary":
                return {"ok": False, "error": "not Primary"}
            if self.disk == "Diskless" and not (self.conn == "Connected" and self.link is not None):
                return {"ok": False, "error": "no access to data (diskless, no peer)"}
            left = deadline - time.monotonic()
            if self.susp:
                if left <= 0:
                    return {"ok": False, "frozen": True, "suspended": sorted(self.susp)}
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.changed.wait(), left)
                continue
            if self.conn == "Connected" and self.link is not None:
                self._seq += 1
                seq = self._seq
                fut: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
                self._write_waiters[seq] = fut
                self.link.send({"t": "write", "id": seq, "kib": kib, "w": wid})
                if self.conf["protocol"] == "A":
                    fut.set_result(True)
                try:
                    acked = await asyncio.wait_for(asyncio.shield(fut), max(left, 0.01))
                except TimeoutError:
                    if time.monotonic() >= deadline:
                        return {"ok": False, "frozen": True, "suspended": sorted(self.susp) or ["in-flight"]}
                    continue
                finally:
                    self._write_waiters.pop(seq, None)
                if not acked:
                    continue  # the link went away under the write: decide again under the new state
                self.stats["dw"] += kib
                self.stats["ns"] += kib
                self._hold(wid)
                self.publish()
                return self._acked(wid, True)
            if self.disk != "UpToDate":
                # Neither local nor remote UpToDate data: DRBD fails the request (on-no-data-accessible io-error).
                return {"ok": False, "error": f"I/O error: no UpToDate data (local disk {self.disk}, no peer)"}
            if self.new_uuid_pending:
                self.meta.rotate(self.rng, True)
                self.new_uuid_pending = False
            self.meta.oos_kib += kib
            self.stats["dw"] += kib
            self._hold(wid)
            self.publish()
            return self._acked(wid, False)

    async def fail_disk(self) -> None:
        """The backing disk failed: DRBD detaches it (Failed, then Diskless) and serves I/O from the peer if it can."""
        if self.disk == "Diskless":
            return
        self.disk = "Failed"
        self.publish()
        self.disk = self.meta.disk = "Diskless"
        self.meta.oos_kib = 0
        self.data = WriteSet()
        self._save_data()
        self._send_state()
        self.publish()

    # ------------------------------------------------------------------ peer link

    def _send_state(self) -> None:
        if self.link is not None and self.conn == "Connected":
            self.link.send({"t": "state", "role": self.role, "disk": self.disk})

    def hello(self) -> dict[str, Any]:
        return {"t": "hello", "node_id": self.cfg["node_id"], "name": self.cfg["node"], "meta": self.meta.to_json(),
                "role": self.role, "disk": self.disk, "discard": self.discard_next}

    async def adopt(self, link: Link) -> None:
        """A TCP connection to the twin exists: handshake, then serve it until it dies."""
        if self.conn != "Connecting" or self.link is not None:
            link.close()
            return
        self.link = link
        link.send(self.hello())
        try:
            peer = await asyncio.wait_for(link.recv(), 3.0)
        except (TimeoutError, OSError, ValueError):
            peer = None
        if peer is None or peer.get("t") != "hello":
            self._drop_link("no handshake")
            return
        self.path_seen = True
        hs = decide({**self.hello(), "node_id": self.cfg["node_id"]}, peer)
        self.discard_next = False
        log(f"handshake with {peer['name']}: {hs.kind} ({hs.kib} KiB)")
        if hs.kind in ("split-brain", "unrelated", "primary-would-be-target"):
            await self._refuse_connection(hs)
            return
        if self.role == "Primary" and peer["role"] == "Primary" and not self.conf["allow_two_primaries"]:
            # The same data generation (DRBD 9 starts a new one only at the first write), but DRBD
            # will not be Connected with two Primaries: the attempt fails and is retried.
            log("Multiple primaries not allowed by config: peer is Primary too")
            self._drop_link("peer is Primary too")
            return
        self.conn, self.peer_role = "Connected", peer["role"]
        self.connects += 1
        self.susp.discard("fencing")  # the peer is back: DRBD resumes the writes it froze for fencing
        self._apply_handshake(hs, peer)
        self.publish()
        if hs.kind == "no-sync" and self.meta.peer_outdated:
            self.meta.peer_outdated = False
            self._unfence()
        pinger = asyncio.get_running_loop().create_task(self._ping(link))
        try:
            await self._serve(link)
        finally:
            pinger.cancel()
            if self.link is link:
                self._drop_link("connection lost", final="StandAlone" if self.conn == "Disconnecting" else "Connecting")

    def _apply_handshake(self, hs: Handshake, peer: dict[str, Any]) -> None:
        if hs.kind == "no-sync":
            up = {"UpToDate", "Consistent", "Outdated"}
            if self.disk in up and peer["disk"] in up:
                self.disk = self.meta.disk = "UpToDate"
                self.peer_disk = "UpToDate"
            else:
                self.peer_disk = peer["disk"]
            self.repl = "Established"
            self.meta.bitmap, self.meta.oos_kib = 0, 0
        elif hs.kind == "source":
            total = hs.kib if hs.kib >= 0 else self.cfg.get("size_kib", 65536)
            self.repl, self.peer_disk = "SyncSource", "Inconsistent"
            self.resync = {"total": max(total, 1), "left": max(total, 1)}
            self._resync_task = asyncio.get_running_loop().create_task(self._run_resync())
        else:  # target
            total = hs.kib if hs.kib >= 0 else self.cfg.get("size_kib", 65536)
            self.repl, self.peer_disk = "SyncTarget", "UpToDate"
            self.disk = self.meta.disk = "Inconsistent"
            self.resync = {"total": max(total, 1), "left": max(total, 1)}

    async def _refuse_connection(self, hs: Handshake) -> None:
        if hs.kind == "split-brain":
            log("Split-Brain detected but unresolved, dropping connection!")
            await self.run_helper("initial-split-brain")
            await self.run_helper("split-brain")
        self.conn = "Disconnecting"
        self.publish()
        self._drop_link(hs.kind, final="StandAlone")

    async def _run_resync(self) -> None:
        step = 0.1
        while True:
            await asyncio.sleep(step)
            rs, link = self._resync_and_link()
            if rs is None or link is None:
                return
            rs["left"] = max(0, rs["left"] - int(self.conf["resync_kib_per_s"] * step))
            link.send({"t": "resync", "left": rs["left"], "total": rs["total"]})
            if rs["left"] == 0:
                self.resync = None
                self.repl, self.peer_disk = "Established", "UpToDate"
                self.meta.bitmap, self.meta.oos_kib = 0, 0
                link.send({"t": "resync_done", "meta": self.meta.to_json(), "data": self.data.to_json()})
                self.publish()
                if self.meta.peer_outdated:
                    self.meta.peer_outdated = False
                    self._unfence()
                return
            self.meta.oos_kib = rs["left"]
            self.publish()

    def _resync_and_link(self) -> tuple[dict[str, int] | None, Link | None]:
        return self.resync, self.link

    async def _ping(self, link: Link) -> None:
        c = self.conf
        while not link.closed:
            await asyncio.sleep(min(c["ping_int"], 0.25))
            link.send({"t": "ping"})
            if time.monotonic() - link.last_rx > c["ping_int"] + c["ping_timeout"]:
                log("PingAck did not arrive in time")
                if self.link is link:
                    self._drop_link("ping timeout")
                return

    async def _serve(self, link: Link) -> None:
        while True:
            try:
                msg = await link.recv()
            except (OSError, ValueError) as e:
                log(f"peer link: {type(e).__name__}: {e}")
                return
            if msg is None or self.link is not link:
                log("peer link: closed by the peer" if msg is None else "peer link: replaced")
                return
            t = msg.get("t")
            if t == "ping":
                continue
            if t == "bye":
                if msg.get("outdated"):
                    if self.role == "Primary":
                        self._peer_outdated_itself = True
                    elif self.disk in ("UpToDate", "Consistent"):
                        self.disk = self.meta.disk = "Outdated"
                        self.publish()
                return
            if t == "state":
                self.peer_role, self.peer_disk = msg["role"], msg["disk"]
                self._peer_promoting = False
                self.publish()
            elif t == "promote_req":
                ok = (self.role != "Primary" and not self._peer_promoting
                      and not (self._promoting and self.cfg["node_id"] < self.cfg["peer_node_id"]))
                self._peer_promoting = ok and not self.conf["allow_two_primaries"]
                link.send({"t": "promote_ack", "id": msg["id"], "ok": ok or self.conf["allow_two_primaries"]})
            elif t == "promote_ack":
                fut = self._promote_waiters.get(msg["id"])
                if fut is not None and not fut.done():
                    fut.set_result(bool(msg["ok"]))
            elif t == "write":
                self.stats["nr"] += msg["kib"]
                self.stats["dw"] += msg["kib"]
                if "w" in msg:
                    self._hold(str(msg["w"]))
                link.send({"t": "write_ack", "id": msg["id"]})
            elif t == "write_ack":
                wfut = self._write_waiters.get(msg["id"])
                if wfut is not None and not wfut.done():
                    wfut.set_result(True)
            elif t == "resync":
                self.resync = {"total": msg["total"], "left": msg["left"]}
                self.meta.oos_kib = msg["left"]
                self.publish()
            elif t == "resync_done":
                src = Meta.from_json(msg["meta"])
                self.meta.current = src.current & ~1 & 0xFFFFFFFFFFFFFFFF
                self.meta.bitmap, self.meta.history, self.meta.oos_kib = 0, list(src.history), 0
                if "data" in msg:  # the target's blocks are now the source's
                    self.data = WriteSet(msg["data"])
                    self._save_data()
                self.disk = self.meta.disk = "UpToDate"
                self.resync, self.repl = None, "Established"
                self._send_state()
                self.publish()
                asyncio.get_running_loop().create_task(self.run_helper("after-resync-target"))

    def _drop_link(self, reason: str, final: str = "Connecting") -> None:
        link, self.link = self.link, None
        self._peer_promoting = False
        was_connected = self.conn == "Connected"
        if link is not None:
            link.close()
        for fut in [*self._write_waiters.values(), *self._promote_waiters.values()]:
            if not fut.done():
                fut.set_result(False)
        if self._resync_task is not None:
            self._resync_task.cancel()
            self._resync_task = None
        if self.resync is not None and self.repl == "SyncSource":
            self.meta.oos_kib = self.resync["left"]
        self.resync = None
        if was_connected:
            log(f"connection lost: {reason}")
        self.peer_role, self.peer_disk, self.repl = "Unknown", "DUnknown", "Off"
        peer_outdated, self._peer_outdated_itself = self._peer_outdated_itself, False
        if was_connected and self.role == "Primary":
            if self.cfg["version"] == "8.4":
                self.meta.rotate(self.rng, True)
            else:
                self.new_uuid_pending = True
            if peer_outdated:
                self.peer_disk, self.meta.peer_outdated = "Outdated", True
            elif self.fencing_on() and self.disk == "UpToDate":
                if self.conf["fencing"] == "resource-and-stonith":
                    self.susp.add("fencing")
                self._fence_task = asyncio.get_running_loop().create_task(self.fence_peer())
        if was_connected and final == "Connecting":
            self.conn = "NetworkFailure"
            self.publish()
            self.conn = "Unconnected"
            self.publish()
        self.conn = final
        self.publish()

    async def dial_forever(self) -> None:
        """The lower node id dials; the other one only listens (either way one TCP connection)."""
        c = self.conf
        while True:
            await asyncio.sleep(c["connect_int"])
            if self.conn != "Connecting" or self.link is not None:
                continue
            if self.cfg["node_id"] > self.cfg["peer_node_id"]:
                continue
            try:
                r, w = await asyncio.wait_for(asyncio.open_connection(
                    self.cfg["peer_addr"], self.cfg["port"], local_addr=(self.cfg["local_addr"], 0)), 1.0)
            except (OSError, TimeoutError):
                continue
            asyncio.get_running_loop().create_task(self.adopt(Link(r, w)))

    async def accept(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await self.adopt(Link(r, w))


def device_busy(dev: str) -> bool:
    """Mounted or opened exclusively by someone (an exclusive open fails with EBUSY)."""
    try:
        fd = os.open(dev, os.O_RDONLY | os.O_EXCL)
    except OSError as e:
        return e.errno == errno.EBUSY
    os.close(fd)
    return False


def _atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _prepare(cfg_path: str) -> dict[str, Any]:
    cfg: dict[str, Any] = json.loads(Path(cfg_path).read_text())
    with contextlib.suppress(FileNotFoundError):
        Path(cfg["socket"]).unlink()
    return cfg


async def amain(cfg_path: str) -> None:
    from .commands import serve_client

    cfg = _prepare(cfg_path)
    node = Node(cfg)
    sock = Path(cfg["socket"])
    ctl = await asyncio.start_unix_server(lambda r, w: serve_client(node, r, w), path=str(sock))
    peer_srv = await asyncio.start_server(node.accept, cfg["local_addr"], cfg["port"], reuse_address=True)
    tasks = [asyncio.create_task(node.dial_forever())]
    if cfg.get("loop_device"):
        tasks.append(asyncio.create_task(node.watch_open()))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    log(f"{cfg['node']}: DRBD {cfg['version']} resource {cfg['resource']} up, disk {node.disk}, listening on {cfg['local_addr']}:{cfg['port']}")
    node.record("boot", node.role, disk=node.disk, conn=node.conn, pid=os.getpid())
    _atomic(Path(str(sock) + ".ready"), str(os.getpid()))
    async with ctl, peer_srv:
        await stop.wait()
    for t in tasks:
        t.cancel()


def main() -> None:
    asyncio.run(amain(sys.argv[1]))


if __name__ == "__main__":
    main()
