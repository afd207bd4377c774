"""Network-namespace labs for tests, the demo and benchmarks (iproute2 + nftables).

A :class:`Lab` creates namespaces named ``cc<pid>_<n>_<name>``: unique to the
creating process, so labs of concurrent test runs never collide, and stale
ones of dead processes can be recognised and removed (:func:`cleanup_stale`).

Invariants:
- ``Lab.close()`` removes everything the lab made: it ends the processes it
  started (by PID) and any process still inside its namespaces, then deletes
  the namespaces (their veths and bridges go with them). It is safe to call
  twice and runs even when a test failed (use the lab as a context manager
  or through a fixture).
- Loss is injected at the netdev ingress/egress hooks (lab.md: drops on the
  inet output hook make ``sendto()`` fail with EPERM instead of losing the
  packet, which is not what a lossy wire does).
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import itertools
import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

CLONE_NEWNET = 0x40000000
_counter = itertools.count()
_NAME = re.compile(r"^cc(\d+)_(\d+)_")


class NetnsError(RuntimeError):
    pass


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    r = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if check and r.returncode != 0:
        raise NetnsError(f"ip {' '.join(args)}: {r.stderr.strip()}")
    return r


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def list_netns() -> list[str]:
    r = _ip("netns", "list", check=False)
    return [line.split()[0] for line in r.stdout.splitlines() if line.strip()]


def _kill_inside(ns: str) -> None:
    r = _ip("netns", "pids", ns, check=False)
    pids = [int(p) for p in r.stdout.split() if p.isdigit()]
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline and any(_pid_alive(p) for p in pids):
            time.sleep(0.02)
        pids = [p for p in pids if _pid_alive(p)]
        if not pids:
            return


def cleanup_stale() -> list[str]:
    """Delete lab namespaces whose creating process is gone. Returns their names."""
    removed = []
    for ns in list_netns():
        m = _NAME.match(ns)
        if m and not _pid_alive(int(m.group(1))):
            _kill_inside(ns)
            _ip("netns", "del", ns, check=False)
            removed.append(ns)
    return removed


class Lab:
    """A set of namespaces and links that disappears with ``close()``."""

    def __init__(self) -> None:
        self.prefix = f"cc{os.getpid()}_{next(_counter)}_"
        self.namespaces: list[str] = []
        self.procs: list[subprocess.Popen[Any]] = []
        self._closed = False

    def __enter__(self) -> Lab:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---------------------------------------------------------------- building

    def ns(self, short: str) -> str:
        """Create namespace ``short`` (returns its full name) with lo up."""
        name = self.prefix + short
        _ip("netns", "add", name)
        self.namespaces.append(name)
        _ip("-n", name, "link", "set", "dev", "lo", "up")
        return name

    def name(self, short: str) -> str:
        return self.prefix + short

    def veth(self, ns_a: str, if_a: str, ns_b: str, if_b: str) -> None:
        _ip("link", "add", if_a, "netns", ns_a, "type", "veth", "peer", "name", if_b, "netns", ns_b)
        self.up(ns_a, if_a)
        self.up(ns_b, if_b)

    def bridge(self, ns: str, name: str) -> None:
        _ip("-n", ns, "link", "add", name, "type", "bridge")
        self.up(ns, name)

    def attach(self, ns: str, ifname: str, bridge: str) -> None:
        _ip("-n", ns, "link", "set", "dev", ifname, "master", bridge)

    def addr(self, ns: str, ifname: str, cidr: str) -> None:
        _ip("-n", ns, "addr", "add", cidr, "dev", ifname)

    def up(self, ns: str, ifname: str) -> None:
        _ip("-n", ns, "link", "set", "dev", ifname, "up")

    def down(self, ns: str, ifname: str) -> None:
        _ip("-n", ns, "link", "set", "dev", ifname, "down")

    def default_route(self, ns: str, via: str) -> None:
        _ip("-n", ns, "route", "add", "default", "via", via)

    # ---------------------------------------------------------------- running

    def run(self, ns: str, *argv: str, check: bool = True, timeout: float = 60, **kw: Any) -> subprocess.CompletedProcess[str]:
        r = subprocess.run(["ip", "netns", "exec", ns, *argv], capture_output=True, text=True, timeout=timeout, check=False, **kw)
        if check and r.returncode != 0:
            raise NetnsError(f"in {ns}: {' '.join(argv)} exited {r.returncode}: {r.stderr.strip()}")
        return r

    def popen(self, ns: str, argv: Sequence[str], **kw: Any) -> subprocess.Popen[Any]:
        """Start a process inside ``ns``; ``close()`` ends it if it is still running."""
        kw.setdefault("start_new_session", True)
        p = subprocess.Popen(["ip", "netns", "exec", ns, *argv], **kw)
        self.procs.append(p)
        return p

    @contextlib.contextmanager
    def enter(self, ns: str) -> Iterator[None]:
        """Run the block with the *calling thread* inside ``ns``.

        Sockets created in the block stay in ``ns`` after it ends, so a test's
        event loop can use endpoints in several namespaces at once.
        """
        with enter_netns(ns):
            yield

    def reachable(self, ns: str, addr: str, count: int = 2, timeout: float = 0.5) -> bool:
        """ICMP echo from inside ``ns`` (icmplib; there is no ping binary on a bare Debian)."""
        import icmplib

        with self.enter(ns):
            return bool(icmplib.ping(addr, count=count, interval=0.05, timeout=timeout, privileged=True).is_alive)

    # ---------------------------------------------------------------- faults

    def nft(self, ns: str, ruleset: str) -> None:
        r = subprocess.run(["ip", "netns", "exec", ns, "nft", "-f", "-"], input=ruleset, capture_output=True, text=True, check=False)
        if r.returncode != 0:
            raise NetnsError(f"nft in {ns}: {r.stderr.strip()}\n{ruleset}")

    def loss(self, ns: str, ifname: str, percent: int, *, ingress: bool = True, egress: bool = True, ip_only: bool = False) -> None:
        """Drop ``percent`` % of frames on ``ifname`` at the netdev hooks (replaces earlier loss).

        ``ip_only`` spares ARP, so that a one-way cut leaves the other
        direction working (neighbour resolution needs replies both ways).
        """
        self.clear_loss(ns, ifname)
        table = _loss_table(ifname)
        # numgen's range is 0..99: "< 100" is refused, and a total cut needs no dice.
        rule = "counter drop" if percent >= 100 else f"numgen random mod 100 < {percent} counter drop"
        if ip_only:
            rule = "meta protocol { ip, ip6 } " + rule
        chains = []
        if ingress:
            chains.append(f'chain in {{ type filter hook ingress device "{ifname}" priority 0; {rule}; }}')
        if egress:
            chains.append(f'chain out {{ type filter hook egress device "{ifname}" priority 0; {rule}; }}')
        self.nft(ns, f"table netdev {table} {{\n  " + "\n  ".join(chains) + "\n}\n")

    def clear_loss(self, ns: str, ifname: str) -> None:
        subprocess.run(["ip", "netns", "exec", ns, "nft", "delete", "table", "netdev", _loss_table(ifname)],
                       capture_output=True, check=False)

    def blackout(self, ns: str, ifnames: Sequence[str]) -> None:
        """Drop everything in and out of all ``ifnames`` at once (one nft transaction)."""
        chains = []
        for i, ifname in enumerate(ifnames):
            chains.append(f'chain in{i} {{ type filter hook ingress device "{ifname}" priority -1; drop; }}')
            chains.append(f'chain out{i} {{ type filter hook egress device "{ifname}" priority -1; drop; }}')
        self.nft(ns, "table netdev ccblackout {\n  " + "\n  ".join(chains) + "\n}\n")

    def end_blackout(self, ns: str) -> None:
        """Undo :meth:`blackout` (all its interfaces at once)."""
        r = subprocess.run(["ip", "netns", "exec", ns, "nft", "delete", "table", "netdev", "ccblackout"],
                           capture_output=True, text=True, check=False)
        if r.returncode != 0:
            raise NetnsError(f"nft in {ns}: {r.stderr.strip()}")

    # ---------------------------------------------------------------- teardown

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for p in self.procs:
            if p.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGTERM)
        deadline = time.monotonic() + 5
        for p in self.procs:
            try:
                p.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGKILL)
                p.wait(5)
        for ns in reversed(self.namespaces):
            _kill_inside(ns)
            _ip("netns", "del", ns, check=False)
        self.namespaces.clear()


def _loss_table(ifname: str) -> str:
    return "ccloss_" + re.sub(r"[^A-Za-z0-9_]", "_", ifname)


_libc = ctypes.CDLL(None, use_errno=True)


@contextlib.contextmanager
def enter_netns(ns: str) -> Iterator[None]:
    """setns(2) the calling thread into /run/netns/NS and back afterwards."""
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        target = os.open(f"/run/netns/{ns}", os.O_RDONLY)
        try:
            if _libc.setns(target, CLONE_NEWNET) != 0:
                err = ctypes.get_errno()
                raise NetnsError(f"setns into {ns}: {os.strerror(err)}")
        finally:
            os.close(target)
        try:
            yield
        finally:
            if _libc.setns(own, CLONE_NEWNET) != 0:
                err = ctypes.get_errno()
                raise NetnsError(f"setns back to the original namespace: {os.strerror(err)}")
    finally:
        os.close(own)


# --------------------------------------------------------------------------- topology


@dataclasses.dataclass(frozen=True)
class NodeAddrs:
    ns: str
    hb0: str  # replication link address
    hb1: str  # second heartbeat path
    lan: str  # LAN address (eth0)
    bmc: str = ""  # this node's BMC, on the LAN bridge in the gateway namespace


@dataclasses.dataclass(frozen=True)
class TwoNodes:
    """node1 and node2 with two direct links (hb0, hb1) and a LAN with a gateway.

    Addresses: hb0 10.0.1.1/30 <-> 10.0.1.2, hb1 10.0.2.1/30 <-> 10.0.2.2,
    LAN 192.168.100.0/24 on a bridge in the gateway namespace (gw .1,
    node1 .11, node2 .12); both nodes route via the gateway. The BMCs'
    addresses (node1's .21, node2's .22) live on the same bridge, in the
    gateway namespace: a BMC stays reachable while its node is off, and a
    node whose uplink is cut cannot reach either BMC (as on a shared switch).
    """

    lab: Lab
    n1: NodeAddrs
    n2: NodeAddrs
    gw: str
    gw_addr: str = "192.168.100.1"
    lan_prefix: int = 24

    def node(self, i: int) -> NodeAddrs:
        return self.n1 if i == 1 else self.n2

    def cut_lan_between_nodes(self) -> None:
        """Drop node1<->node2 traffic at the 'switch' while both still reach the gateway."""
        self.lab.nft(self.gw, (
            "table bridge cclan {\n  chain lanfwd { type filter hook forward priority 0;"
            ' iifname "p-n1" oifname "p-n2" drop; iifname "p-n2" oifname "p-n1" drop; }\n}\n'
        ))

    def heal_lan_between_nodes(self) -> None:
        subprocess.run(["ip", "netns", "exec", self.gw, "nft", "delete", "table", "bridge", "cclan"], capture_output=True, check=False)

    def cut_uplink(self, i: int) -> None:
        """The node's LAN port goes down at the switch (it loses gateway and LAN peer)."""
        self.lab.down(self.gw, f"p-n{i}")

    def heal_uplink(self, i: int) -> None:
        self.lab.up(self.gw, f"p-n{i}")

    def cut_lan_one_way(self, src: int) -> None:
        """Drop IP from node ``src`` to the other node at the switch; ARP passes, so the reverse direction still works."""
        dst = 3 - src
        self.lab.nft(self.gw, (
            f"table bridge cclan{src} {{\n  chain lanfwd {{ type filter hook forward priority 0;"
            f' iifname "p-n{src}" oifname "p-n{dst}" ether type {{ ip, ip6 }} drop; }}\n}}\n'
        ))

    def heal_lan_one_way(self, src: int) -> None:
        subprocess.run(["ip", "netns", "exec", self.gw, "nft", "delete", "table", "bridge", f"cclan{src}"], capture_output=True, check=False)

    def cut_gateway(self, i: int) -> None:
        """Node ``i`` loses the gateway only: its IPv4 traffic to the gateway's address is dropped at the switch.

        The LAN peer and the BMCs stay reachable (unlike :meth:`cut_uplink`).
        """
        self.lab.nft(self.gw, (
            f"table bridge ccgw{i} {{\n  chain gwin {{ type filter hook input priority 0;"
            f' iifname "p-n{i}" ip daddr {self.gw_addr} drop; }}\n}}\n'
        ))

    def heal_gateway(self, i: int) -> None:
        subprocess.run(["ip", "netns", "exec", self.gw, "nft", "delete", "table", "bridge", f"ccgw{i}"], capture_output=True, check=False)


def two_nodes(lab: Lab) -> TwoNodes:
    n1, n2, gw = lab.ns("n1"), lab.ns("n2"), lab.ns("gw")
    lab.veth(n1, "hb0", n2, "hb0")
    lab.veth(n1, "hb1", n2, "hb1")
    lab.addr(n1, "hb0", "10.0.1.1/30")
    lab.addr(n2, "hb0", "10.0.1.2/30")
    lab.addr(n1, "hb1", "10.0.2.1/30")
    lab.addr(n2, "hb1", "10.0.2.2/30")
    lab.bridge(gw, "br0")
    lab.addr(gw, "br0", "192.168.100.1/24")
    for i in (1, 2):
        lab.addr(gw, "br0", f"192.168.100.{20 + i}/24")  # node i's BMC
    for i, ns in ((1, n1), (2, n2)):
        lab.veth(ns, "eth0", gw, f"p-n{i}")
        lab.attach(gw, f"p-n{i}", "br0")
        lab.addr(ns, "eth0", f"192.168.100.{10 + i}/24")
        lab.default_route(ns, "192.168.100.1")
    return TwoNodes(
        lab=lab,
        n1=NodeAddrs(n1, "10.0.1.1", "10.0.2.1", "192.168.100.11", "192.168.100.21"),
        n2=NodeAddrs(n2, "10.0.1.2", "10.0.2.2", "192.168.100.12", "192.168.100.22"),
        gw=gw,
    )


def interfaces(ns: str) -> list[str]:
    r = _ip("-n", ns, "-o", "link", "show")
    return [m.group(1) for m in re.finditer(r"^\d+: ([^:@]+)", r.stdout, re.M)]


def netns_path(ns: str) -> Path:
    return Path("/run/netns") / ns
