"""The floating IP step: add and remove ``ip.address`` on ``ip.interface`` through netlink.

After adding the address the step sends ``ip.arp_count`` announcements
``ip.arp_interval`` apart (IPaddr2's default is 5 x 200 ms): gratuitous ARP
for IPv4, unsolicited neighbour advertisements for IPv6. Neighbours that
cached the old holder's MAC switch to ours at once.

On an unplanned takeover (``failover``) with ``ip.conflict_check`` on, the
step first makes sure nobody else holds the address, and fails with a clear
message if somebody does (the old node may not be off after all): IPv4 sends
ARP probes and waits ``ip.conflict_timeout`` for an answer from another MAC;
IPv6 adds the address with the kernel's duplicate address detection and
waits for its verdict (about one to two seconds with the kernel's defaults);
on an interface without it (accept_dad=0, dad_transmits=0) it sends
neighbour solicitations for the address and waits as for IPv4.
Otherwise IPv6 addresses are added without DAD, so they are usable at once.

Invariants: presence is read from netlink, never assumed; the address is
added only right after a gate check; only the exact configured
address/prefix is ever removed, and a stop does not succeed while the same
address is still on this node another way (another prefix or interface,
added by hand), since the node would go on answering for it. Blocking netlink and packet I/O runs in
worker threads (opened in the daemon's network namespace).
"""

from __future__ import annotations

import asyncio
import dataclasses
import errno
import ipaddress
import socket
from pathlib import Path

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from .. import logsetup
from ..config import IpConfig
from . import arp, ndp
from .base import ResourceError, StepContext
from .threads import IP, run_in

log = logsetup.get("daemon.resources.ip")

IFF_UP = 0x1
IFA_F_NODAD = 0x02
IFA_F_DADFAILED = 0x08
IFA_F_TENTATIVE = 0x40
DAD_WAIT = 5.0  # longest wait for the kernel's duplicate address detection


@dataclasses.dataclass(frozen=True)
class IpState:
    present: bool
    index: int
    mac: str
    up: bool
    flags: int = 0  # the address's IFA_F_* flags when present

    @property
    def tentative(self) -> bool:
        return bool(self.flags & IFA_F_TENTATIVE)

    @property
    def dad_failed(self) -> bool:
        return bool(self.flags & IFA_F_DADFAILED)


class InterfaceMissing(ResourceError):
    pass


class FloatingIp:
    name = "ip"
    stop_attempts = 3

    def __init__(self, cfg: IpConfig) -> None:
        self.cfg = cfg
        self.address = cfg.address

    def start_budget(self) -> float:
        return 10.0 + max(self.cfg.conflict_timeout, DAD_WAIT) + self.cfg.arp_count * self.cfg.arp_interval

    def stop_budget(self) -> float:
        return 10.0

    # ------------------------------------------------------------------ netlink (blocking)

    def read_state(self) -> IpState:
        """The interface and whether the address is on it (blocking; raises ResourceError)."""
        try:
            with IPRoute() as ipr:
                found = ipr.link_lookup(ifname=self.cfg.interface)
                if not found:
                    raise InterfaceMissing(f"interface {self.cfg.interface} (ip.interface) does not exist")
                index = found[0]
                link = ipr.get_links(index)[0]
                ours = [a for a in ipr.get_addr(index=index) if self._is_ours(a)]
        except NetlinkError as e:
            raise ResourceError(f"netlink error reading {self.cfg.interface}: {e}") from e
        flags = int(ours[0].get_attr("IFA_FLAGS") or ours[0]["flags"]) if ours else 0
        return IpState(present=bool(ours), index=index, mac=str(link.get_attr("IFLA_ADDRESS") or ""),
                       up=bool(link["flags"] & IFF_UP), flags=flags)

    def present(self) -> bool:
        return self.read_state().present

    def _is_ours(self, msg: object) -> bool:
        get_attr = msg.get_attr  # type: ignore[attr-defined]
        addr = get_attr("IFA_LOCAL") or get_attr("IFA_ADDRESS")
        try:
            return ipaddress.ip_address(addr) == self.address.ip and msg["prefixlen"] == self.address.network.prefixlen  # type: ignore[index]
        except ValueError:
            return False

    def _change(self, command: str, index: int, dad: bool = False) -> None:
        a = self.address
        kw: dict[str, object] = {"index": index, "address": str(a.ip), "prefixlen": a.network.prefixlen}
        if command == "add" and a.version == 4 and a.network.prefixlen < 31:
            kw["broadcast"] = str(a.network.broadcast_address)
        if command == "add" and a.version == 6 and not dad:
            kw["flags"] = IFA_F_NODAD
        try:
            with IPRoute() as ipr:
                ipr.addr(command, **kw)
        except NetlinkError as e:
            if (command, e.code) in (("add", errno.EEXIST), ("del", errno.EADDRNOTAVAIL)):
                return  # already in the wanted state
            verb = "adding" if command == "add" else "removing"
            raise ResourceError(f"{verb} {a} on {self.cfg.interface} failed: {e}") from e

    # ------------------------------------------------------------------ step

    async def start(self, ctx: StepContext) -> None:
        st = await run_in(IP, self.read_state)
        if st.present and not st.dad_failed:
            ctx.note(f"{self.address} already on {self.cfg.interface}")
            return
        if not st.up:
            raise ResourceError(f"interface {self.cfg.interface} is down; not adding {self.address}")
        if st.present:  # a leftover that failed DAD: take it away and try again
            await run_in(IP, self._change, "del", st.index)
        req = ctx.start
        check = req is not None and req.takeover == "failover" and self.cfg.conflict_check
        dad = check and self.address.version == 6 and await run_in(IP, self._does_dad)
        if check and self.address.version == 4:
            assert isinstance(self.address.ip, ipaddress.IPv4Address)
            other = await run_in(IP, arp.probe, self.cfg.interface, st.mac, self.address.ip, self.cfg.conflict_timeout)
            if other is not None:
                raise ResourceError(self._conflict(f"still answers ARP from {other}"))
            ctx.note(f"no answer to the conflict probe within {self.cfg.conflict_timeout:g} s")
        elif check and not dad:  # IPv6 on an interface without DAD: ask for the address ourselves
            assert isinstance(self.address.ip, ipaddress.IPv6Address)
            other = await run_in(IP, ndp.probe, self.cfg.interface, st.mac, self.address.ip, self.cfg.conflict_timeout)
            if other is not None:
                raise ResourceError(self._conflict(f"still answers neighbour solicitations from {other}"))
            ctx.note(f"no answer to the conflict probe within {self.cfg.conflict_timeout:g} s "
                     f"({self.cfg.interface} does no duplicate address detection)")
        ctx.check_gate()
        await run_in(IP, self._change, "add", st.index, dad)
        st = await run_in(IP, self.read_state)
        if not st.present:
            raise ResourceError(f"{self.address} is not on {self.cfg.interface} after adding it")
        if dad:
            await self._await_dad(ctx)
        ctx.note(f"added {self.address} on {self.cfg.interface}")
        if self.cfg.arp_count:
            sent = await self._announce(st)
            kind = "gratuitous ARP" if self.address.version == 4 else "neighbour advertisements"
            ctx.note(f"{sent} {kind} sent")

    def _does_dad(self) -> bool:
        """Whether the kernel runs duplicate address detection on the interface (blocking: reads sysctls)."""
        def conf(iface: str, key: str) -> int:
            try:
                return int(Path(f"/proc/sys/net/ipv6/conf/{iface}/{key}").read_text())
            except (OSError, ValueError):
                return 0
        accept = max(conf("all", "accept_dad"), conf(self.cfg.interface, "accept_dad"))
        return accept >= 1 and conf(self.cfg.interface, "dad_transmits") >= 1

    def _conflict(self, how: str) -> str:
        return (f"{self.address.ip} {how} on {self.cfg.interface}: another host holds it "
                "(is the old node really off?); not taking the address over")

    async def _await_dad(self, ctx: StepContext) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + DAD_WAIT
        while True:
            st = await run_in(IP, self.read_state)
            if st.dad_failed or not st.present or loop.time() >= deadline:
                break
            if not st.tentative:
                ctx.note("duplicate address detection passed")
                return
            await asyncio.sleep(0.05)
        await run_in(IP, self._change, "del", st.index)
        if st.dad_failed:
            raise ResourceError(self._conflict("failed duplicate address detection (a neighbour answered for it)"))
        raise ResourceError(f"duplicate address detection for {self.address.ip} did not finish within {DAD_WAIT:g} s")

    async def _announce(self, st: IpState) -> int:
        ip = self.address.ip
        try:
            if isinstance(ip, ipaddress.IPv4Address):
                sock = await run_in(IP, arp.open_socket, self.cfg.interface)
                packet, dest = arp.frame(arp.OP_REQUEST, arp.mac_bytes(st.mac), ip.packed, ip.packed), None
            else:
                sock = await run_in(IP, ndp.open_socket, st.index, ip)
                packet, dest = ndp.advertisement(ip, st.mac), st.index
        except OSError as e:
            raise ResourceError(f"cannot announce {ip} on {self.cfg.interface}: {e.strerror}") from e
        sent = 0
        with sock:
            for i in range(self.cfg.arp_count):
                if i:
                    await asyncio.sleep(self.cfg.arp_interval)
                try:
                    if dest is None:
                        sock.send(packet)
                    else:
                        ndp.send(sock, packet, dest)
                    sent += 1
                except OSError as e:
                    log.warning("announcement %d for %s on %s failed: %s", i + 1, ip, self.cfg.interface, e.strerror)
        return sent

    async def stop(self, ctx: StepContext) -> None:
        try:
            st: IpState | None = await run_in(IP, self.read_state)
        except InterfaceMissing as e:
            ctx.note(f"{e}, so {self.address} is not held")  # a vanished interface took the address with it
            st = None
        if st is not None and st.present:
            await run_in(IP, self._change, "del", st.index)
            if await run_in(IP, self.present):
                raise ResourceError(f"{self.address} is still on {self.cfg.interface} after removing it")
            ctx.note(f"removed {self.address} from {self.cfg.interface}")
        elif st is not None:
            ctx.note(f"{self.address} not on {self.cfg.interface}")
        # Only ours is removed; the same address held any other way still makes this node answer for it.
        others = await run_in(IP, self.held_otherwise)
        if others:
            raise ResourceError(f"{', '.join(others)} (not by clever-cluster); this node still answers for "
                                f"{self.address.ip}: remove it by hand")

    def held_otherwise(self) -> list[str]:
        """The floating address on this node other than as configured (another prefix or interface), blocking."""
        family = socket.AF_INET if self.address.version == 4 else socket.AF_INET6
        try:
            with IPRoute() as ipr:
                names = {link["index"]: link.get_attr("IFLA_IFNAME") for link in ipr.get_links()}
                found = []
                for a in ipr.get_addr(family=family):
                    addr = a.get_attr("IFA_LOCAL") or a.get_attr("IFA_ADDRESS")
                    if ipaddress.ip_address(addr) != self.address.ip:
                        continue
                    if names.get(a["index"]) == self.cfg.interface and a["prefixlen"] == self.address.network.prefixlen:
                        continue  # ours
                    found.append(f"{self.address.ip}/{a['prefixlen']} is also on {names.get(a['index'], a['index'])}")
        except NetlinkError as e:
            raise ResourceError(f"netlink error listing the addresses: {e}") from e
        return found
