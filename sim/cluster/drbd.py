"""A model of DRBD for two nodes with protocol C and `fencing resource-and-stonith`.

Data is a tree of writes: each disk points at its newest write; a write's
ancestors are the data it contains. Application writes give a new data UUID;
image metadata writes (save, consume) keep their parent's UUID, so a save
image's token stays valid until the VMs write again.

Behaviour kept (issue 3): the connection needs the replication link both
ways and both nodes powered; a silently dead peer is noticed only after
``ping_timeout``; a clean `down` is noticed at once and leaves the leaving
Secondary Outdated; a second Primary is refused while Connected; a lone boot
comes up Consistent (Outdated and worse stay); outdate is refused while
Connected; reconnecting with diverged data is split brain (both StandAlone);
a Primary that loses its peer freezes I/O and runs the fence-peer handler,
and stays frozen when the handler exits other than 3/4/5/7 until resume-io;
a disconnected promotion whose peer disk is not known Outdated runs the
fence-peer handler first and waits for it (DRBD's SS_PRIMARY_NOP retry): it
goes ahead on 4/7 and is refused with -7 otherwise (``--force`` goes ahead).
Resync is instantaneous (a simplification: no Inconsistent window).
"""

from __future__ import annotations

import dataclasses

from clever_cluster.policy import Conn, Disk, ImageToken, Role


@dataclasses.dataclass
class Write:
    parent: int
    uuid: int
    images: dict[str, tuple[ImageToken, bool]]   # vm -> (token, consumed)


PENDING = "waiting for the fence-peer handler"


class DataTree:
    def __init__(self) -> None:
        self.writes: list[Write] = [Write(-1, 0, {})]

    def add(self, parent: int, *, app: bool, images: dict[str, tuple[ImageToken, bool]] | None = None) -> int:
        wid = len(self.writes)
        p = self.writes[parent]
        self.writes.append(Write(parent, wid if app else p.uuid, p.images if images is None else images))
        return wid

    def clone(self) -> DataTree:
        t = DataTree()
        t.writes = list(self.writes)     # Write objects are never changed after creation
        return t

    def contains(self, head: int, wid: int) -> bool:
        """Is write ``wid`` part of the data at ``head``?"""
        x = head
        while x >= wid:
            if x == wid:
                return True
            x = self.writes[x].parent
        return False

    def uuid(self, head: int) -> str:
        return f"{self.writes[head].uuid:08X}"


@dataclasses.dataclass
class DrbdNode:
    role: Role = Role.SECONDARY
    disk: Disk = Disk.UP_TO_DATE
    conn: Conn = Conn.CONNECTING
    peer_disk: Disk = Disk.UNKNOWN
    peer_role: Role = Role.UNKNOWN
    head: int = 0
    suspended: bool = False
    handler: bool = False            # fence-peer handler running
    promoting: bool = False          # a `drbdadm primary` waits for the fence-peer handler it started
    split_brain: bool = False
    up: bool = True                  # the node is powered and DRBD configured
    path_lost_at: float | None = None  # when the replication path died while we believed Connected
    config_safe: bool = True
    connected_at: float | None = None  # when the connection last became Connected


class DrbdPair:
    def __init__(self, names: tuple[str, str], tree: DataTree, ping_timeout: float) -> None:
        self.tree = tree
        self.ping_timeout = ping_timeout
        self.n: dict[str, DrbdNode] = {names[0]: DrbdNode(), names[1]: DrbdNode()}
        self.names = names

    def clone(self, tree: DataTree) -> DrbdPair:
        c = DrbdPair(self.names, tree, self.ping_timeout)
        c.n = {k: dataclasses.replace(v) for k, v in self.n.items()}
        return c

    def other(self, name: str) -> str:
        return self.names[1] if name == self.names[0] else self.names[0]

    # ---------------------------------------------------------------- connection
    def update(self, now: float, path_ok: bool) -> list[tuple[str, str]]:
        """Advance connection state; returns events (node, 'handler_start'|...)."""
        events: list[tuple[str, str]] = []
        a, b = self.names
        na, nb = self.n[a], self.n[b]
        for name, me, peer in ((a, na, nb), (b, nb, na)):
            if not me.up or me.conn is not Conn.CONNECTED:
                continue
            if path_ok and peer.up and peer.conn is Conn.CONNECTED:
                me.path_lost_at = None
                continue
            if me.path_lost_at is None:
                me.path_lost_at = now
            if now - me.path_lost_at >= self.ping_timeout:
                self._lose(name, me, outdated_peer=False)
                events.append((name, "lost"))
        if path_ok and na.up and nb.up and na.conn is Conn.CONNECTING and nb.conn is Conn.CONNECTING:
            if self._handshake(na, nb):
                na.connected_at = nb.connected_at = now
            events.append((a, "connected"))
        return events

    def _lose(self, name: str, me: DrbdNode, outdated_peer: bool) -> None:
        me.conn = Conn.CONNECTING
        me.path_lost_at = None
        me.peer_role = Role.UNKNOWN
        me.peer_disk = Disk.OUTDATED if outdated_peer else Disk.UNKNOWN
        if me.role is Role.PRIMARY and not outdated_peer and not me.handler:
            me.suspended = True
            me.handler = True

    def _handshake(self, na: DrbdNode, nb: DrbdNode) -> bool:
        """Compare the data and connect (True), or find split brain (False)."""
        t = self.tree
        if na.head == nb.head:
            pass
        elif t.contains(nb.head, na.head) and na.role is not Role.PRIMARY:
            na.head = nb.head
        elif t.contains(na.head, nb.head) and nb.role is not Role.PRIMARY:
            nb.head = na.head
        else:
            for x in (na, nb):
                x.conn = Conn.STANDALONE
                x.split_brain = True
            return False
        usable = (Disk.UP_TO_DATE, Disk.CONSISTENT, Disk.OUTDATED, Disk.INCONSISTENT)
        for x in (na, nb):
            x.conn = Conn.CONNECTED
            x.path_lost_at = None
            if x.disk in usable:
                x.disk = Disk.UP_TO_DATE
        for x, y in ((na, nb), (nb, na)):
            x.peer_disk = y.disk
            x.peer_role = y.role
            if x.handler:
                x.handler = False     # "Ignoring fence-peer exit code": the peer is back
            x.suspended = False
        return True

    def sync_views(self) -> None:
        """While Connected, each side sees the other's role and disk."""
        a, b = self.names
        na, nb = self.n[a], self.n[b]
        if na.conn is Conn.CONNECTED and nb.conn is Conn.CONNECTED and na.up and nb.up:
            na.peer_role, nb.peer_role = nb.role, na.role
            na.peer_disk, nb.peer_disk = nb.disk, na.disk

    # ---------------------------------------------------------------- commands (drbdadm)
    def promote(self, name: str, force: bool) -> str | None:
        """`drbdadm primary [--force]`: None when Primary, PENDING while it waits for the fence-peer
        handler (call again), else DRBD's refusal."""
        me, peer = self.n[name], self.n[self.other(name)]
        if me.promoting:
            if me.handler:
                return PENDING
            me.promoting = False
            if me.conn is not Conn.CONNECTED and me.peer_disk not in (Disk.OUTDATED, Disk.INCONSISTENT):
                if not force:
                    return "(-7) Refusing to be Primary while peer is not outdated"
                me.peer_disk = Disk.OUTDATED      # "Forced into split brain situation!"
        if me.conn is Conn.CONNECTED and peer.up and peer.role is Role.PRIMARY:
            return "(-1) Multiple primaries not allowed by config"
        if me.disk is not Disk.UP_TO_DATE and not (force and me.disk in (Disk.CONSISTENT, Disk.OUTDATED)):
            return f"(-2) Need access to UpToDate data (disk {me.disk})"
        if me.split_brain:
            return "split brain"
        if me.conn is not Conn.CONNECTED and me.peer_disk not in (Disk.OUTDATED, Disk.INCONSISTENT):
            # fencing resource-and-stonith: the peer may hold UpToDate data; fence-peer decides
            me.promoting = True
            me.handler = True
            return PENDING
        me.role = Role.PRIMARY
        if force:
            me.disk = Disk.UP_TO_DATE
        return None

    def promote_abandoned(self, name: str) -> None:
        """The sequence that asked for the promotion gave up; a late handler answer promotes nothing."""
        self.n[name].promoting = False

    def demote(self, name: str) -> None:
        self.n[name].role = Role.SECONDARY

    def outdate(self, name: str) -> str | None:
        me = self.n[name]
        if me.conn is Conn.CONNECTED:
            return "(-6) Refusing to be Outdated while Connected"
        if me.role is Role.PRIMARY:
            return "(-14) primary"
        if me.disk in (Disk.UP_TO_DATE, Disk.CONSISTENT):
            me.disk = Disk.OUTDATED
        return None

    def disconnect(self, name: str) -> None:
        me = self.n[name]
        was = me.conn is Conn.CONNECTED
        me.conn = Conn.STANDALONE
        me.path_lost_at = None
        me.peer_role = Role.UNKNOWN
        me.peer_disk = Disk.UNKNOWN if not was else me.peer_disk
        other = self.n[self.other(name)]
        if was and other.up and other.conn is Conn.CONNECTED:
            self._lose(self.other(name), other, outdated_peer=False)

    def connect(self, name: str) -> None:
        me = self.n[name]
        if me.conn is Conn.STANDALONE:
            me.conn = Conn.CONNECTING
            me.split_brain = False if not me.split_brain else me.split_brain

    def handler_exit(self, name: str, code: int) -> None:
        me = self.n[name]
        if not me.handler:
            return
        me.handler = False
        if code in (4, 7):
            me.peer_disk = Disk.OUTDATED
            me.suspended = False
        elif code == 3:
            me.peer_disk = Disk.INCONSISTENT
            me.suspended = False
        # anything else: frozen until resume-io

    def resume_io(self, name: str) -> None:
        me = self.n[name]
        if not me.handler:
            me.suspended = False

    # ---------------------------------------------------------------- power
    def power_off(self, name: str, clean: bool) -> None:
        me = self.n[name]
        other_name = self.other(name)
        other = self.n[other_name]
        if clean and me.conn is Conn.CONNECTED and other.up and other.conn is Conn.CONNECTED:
            if me.role is Role.SECONDARY:
                me.disk = Disk.OUTDATED if me.disk is Disk.UP_TO_DATE and other.role is Role.PRIMARY else me.disk
            # the peer learns what the leaving disk really is: Outdated only if it was outdated
            self._lose(other_name, other, outdated_peer=me.role is Role.SECONDARY and me.disk is Disk.OUTDATED)
        me.up = False
        me.role = Role.SECONDARY
        me.conn = Conn.CONNECTING
        me.suspended = me.handler = me.promoting = False
        me.path_lost_at = None

    def boot(self, name: str) -> None:
        me = self.n[name]
        me.up = True
        me.connected_at = None
        me.role = Role.SECONDARY
        me.conn = Conn.CONNECTING
        me.peer_disk = Disk.UNKNOWN
        me.peer_role = Role.UNKNOWN
        me.split_brain = False
        if me.disk in (Disk.UP_TO_DATE, Disk.CONSISTENT):
            me.disk = Disk.CONSISTENT
