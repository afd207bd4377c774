"""The floating IP step: add and remove ``ip.address`` on ``ip.interface`` through netlink.

After adding an IPv4 address the step sends ``ip.arp_count`` gratuitous ARP
announcements ``ip.arp_interval`` apart (IPaddr2's default is 5 x 200 ms), so
neighbours that cached the old holder's MAC switch to ours at once. On an
unplanned takeover (``failover``) with ``ip.conflict_check`` on, an ARP
probe runs first: if another MAC still answers for the address within
``ip.conflict_timeout``, the step fails and says so instead of taking the
address silently (the old node may not be off after all).

Invariants: presence is read from netlink, never assumed; the address is
added only right after a gate check; only the exact configured
address/prefix is ever removed. Blocking netlink and packet I/O runs in
worker threads (opened in the daemon's network namespace).
"""

from __future__ import annotations

import asyncio
import dataclasses
import errno
import ipaddress

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from .. import logsetup
from ..config import IpConfig
from . import arp
from .base import ResourceError, StepContext

log = logsetup.get("daemon.resources.ip")

IFF_UP = 0x1


@dataclasses.dataclass(frozen=True)
class IpState:
    present: bool
    index: int
    mac: str
    up: bool


class FloatingIp:
    name = "ip"
    stop_attempts = 3

    def __init__(self, cfg: IpConfig) -> None:
        self.cfg = cfg
        self.address = cfg.address

    def start_budget(self) -> float:
        return 10.0 + self.cfg.conflict_timeout + self.cfg.arp_count * self.cfg.arp_interval

    def stop_budget(self) -> float:
        return 10.0

    # ------------------------------------------------------------------ netlink (blocking)

    def read_state(self) -> IpState:
        """The interface and whether the address is on it (blocking; raises ResourceError)."""
        try:
            with IPRoute() as ipr:
                found = ipr.link_lookup(ifname=self.cfg.interface)
                if not found:
                    raise ResourceError(f"interface {self.cfg.interface} (ip.interface) does not exist")
                index = found[0]
                link = ipr.get_links(index)[0]
                present = any(self._is_ours(a) for a in ipr.get_addr(index=index))
        except NetlinkError as e:
            raise ResourceError(f"netlink error reading {self.cfg.interface}: {e}") from e
        return IpState(present=present, index=index, mac=str(link.get_attr("IFLA_ADDRESS") or ""),
                       up=bool(link["flags"] & IFF_UP))

    def present(self) -> bool:
        return self.read_state().present

    def _is_ours(self, msg: object) -> bool:
        get_attr = msg.get_attr  # type: ignore[attr-defined]
        addr = get_attr("IFA_LOCAL") or get_attr("IFA_ADDRESS")
        try:
            return ipaddress.ip_address(addr) == self.address.ip and msg["prefixlen"] == self.address.network.prefixlen  # type: ignore[index]
        except ValueError:
            return False

    def _change(self, command: str, index: int) -> None:
        a = self.address
        kw: dict[str, object] = {"index": index, "address": str(a.ip), "prefixlen": a.network.prefixlen}
        if command == "add" and a.version == 4 and a.network.prefixlen < 31:
            kw["broadcast"] = str(a.network.broadcast_address)
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
        st = await asyncio.to_thread(self.read_state)
        if st.present:
            ctx.note(f"{self.address} already on {self.cfg.interface}")
            return
        if not st.up:
            raise ResourceError(f"interface {self.cfg.interface} is down; not adding {self.address}")
        req = ctx.start
        if req is not None and req.takeover == "failover" and self.cfg.conflict_check and self.address.version == 4:
            other = await asyncio.to_thread(arp.probe, self.cfg.interface, st.mac, self.address.ip, self.cfg.conflict_timeout)
            if other is not None:
                raise ResourceError(f"{self.address.ip} still answers ARP from {other} on {self.cfg.interface}: another host "
                                    "holds it (is the old node really off?); not taking the address over")
            ctx.note(f"no answer to the conflict probe within {self.cfg.conflict_timeout:g} s")
        ctx.check_gate()
        await asyncio.to_thread(self._change, "add", st.index)
        if not await asyncio.to_thread(self.present):
            raise ResourceError(f"{self.address} is not on {self.cfg.interface} after adding it")
        ctx.note(f"added {self.address} on {self.cfg.interface}")
        if self.address.version == 4 and self.cfg.arp_count:
            sent = await self._announce(st.mac)
            ctx.note(f"{sent} gratuitous ARP sent")

    async def _announce(self, mac: str) -> int:
        ip = self.address.ip
        assert isinstance(ip, ipaddress.IPv4Address)
        try:
            sock = await asyncio.to_thread(arp.open_socket, self.cfg.interface)
        except OSError as e:
            raise ResourceError(f"cannot send gratuitous ARP on {self.cfg.interface}: {e.strerror}") from e
        sent = 0
        with sock:
            for i in range(self.cfg.arp_count):
                if i:
                    await asyncio.sleep(self.cfg.arp_interval)
                try:
                    arp.announce_once(sock, mac, ip)
                    sent += 1
                except OSError as e:
                    log.warning("gratuitous ARP %d for %s on %s failed: %s", i + 1, ip, self.cfg.interface, e.strerror)
        return sent

    async def stop(self, ctx: StepContext) -> None:
        st = await asyncio.to_thread(self.read_state)
        if not st.present:
            ctx.note(f"{self.address} not on {self.cfg.interface}")
            return
        await asyncio.to_thread(self._change, "del", st.index)
        if await asyncio.to_thread(self.present):
            raise ResourceError(f"{self.address} is still on {self.cfg.interface} after removing it")
        ctx.note(f"removed {self.address} from {self.cfg.interface}")
