"""IPv6 neighbour discovery: unsolicited advertisements (the counterpart of gratuitous ARP) and probes.

An advertisement for the floating address, with the Override flag and our
MAC as the target link-layer address, sent to all nodes (ff02::1) with hop
limit 255 (receivers drop neighbour discovery packets with any other), makes
neighbours that cached the address switch to our MAC. The kernel computes the
ICMPv6 checksum on raw ICMPv6 sockets.

Conflict detection for IPv6 is the kernel's duplicate address detection; see
``ip.py``. Where the interface does not do it (``accept_dad=0``,
``dad_transmits=0``), :func:`probe` does the same on a packet socket: a
solicitation from the unspecified address to the address's solicited-node
group, which whoever holds it answers with an advertisement. Blocking:
callers run it in a worker thread.
"""

from __future__ import annotations

import ipaddress
import socket
import struct

from .arp import ask, mac_bytes, mac_text

ND_NEIGHBOR_SOLICIT = 135
ND_NEIGHBOR_ADVERT = 136
FLAG_OVERRIDE = 0x20000000
OPT_TARGET_LLADDR = 2
ETH_P_IPV6 = 0x86DD
ALL_NODES = "ff02::1"


def advertisement(target: ipaddress.IPv6Address, mac: str) -> bytes:
    option = struct.pack("!BB6s", OPT_TARGET_LLADDR, 1, mac_bytes(mac))
    return struct.pack("!BBHI16s", ND_NEIGHBOR_ADVERT, 0, 0, FLAG_OVERRIDE, target.packed) + option


def open_socket(ifindex: int, source: ipaddress.IPv6Address) -> socket.socket:
    s = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
    try:
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, 255)
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_IF, ifindex)
        s.bind((str(source), 0, 0, ifindex))
    except OSError:
        s.close()
        raise
    return s


def send(sock: socket.socket, packet: bytes, ifindex: int) -> None:
    sock.sendto(packet, (ALL_NODES, 0, 0, ifindex))



def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\x00"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def dad_probe_frame(target: ipaddress.IPv6Address, mac: str) -> bytes:
    """An Ethernet frame with a duplicate address detection solicitation for ``target`` (RFC 4862 5.4.2):
    from the unspecified address, so it needs no address of ours and changes nobody's neighbour cache."""
    group = ipaddress.IPv6Address(b"\xff\x02" + b"\x00" * 9 + b"\x01\xff" + target.packed[13:])
    src = ipaddress.IPv6Address("::")
    body = struct.pack("!BBHI16s", ND_NEIGHBOR_SOLICIT, 0, 0, 0, target.packed)
    pseudo = src.packed + group.packed + struct.pack("!I3xB", len(body), socket.IPPROTO_ICMPV6)
    body = body[:2] + struct.pack("!H", _checksum(pseudo + body)) + body[4:]
    ip6 = struct.pack("!IHBB16s16s", 6 << 28, len(body), socket.IPPROTO_ICMPV6, 255, src.packed, group.packed)
    eth = b"\x33\x33" + group.packed[12:] + mac_bytes(mac) + struct.pack("!H", ETH_P_IPV6)
    return eth + ip6 + body


def _advertiser(frame: bytes, target: ipaddress.IPv6Address) -> str | None:
    """The sender's MAC when ``frame`` is a neighbour advertisement for ``target``, else None."""
    if len(frame) < 14 + 40 + 24 or struct.unpack_from("!H", frame, 12)[0] != ETH_P_IPV6:
        return None
    if frame[14 + 6] != socket.IPPROTO_ICMPV6:
        return None
    icmp = frame[14 + 40:]
    if icmp[0] != ND_NEIGHBOR_ADVERT or icmp[8:24] != target.packed:
        return None
    return mac_text(frame[6:12])


def probe(ifname: str, mac: str, target: ipaddress.IPv6Address, timeout: float, probes: int = 2) -> str | None:
    """The MAC of another host that defends ``target`` within ``timeout`` seconds, or None (blocking)."""
    own = mac_bytes(mac)

    def answer(data: bytes) -> str | None:
        return None if data[6:12] == own else _advertiser(data, target)

    with socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_IPV6)) as s:
        s.bind((ifname, ETH_P_IPV6))
        return ask(s, dad_probe_frame(target, mac), answer, timeout, probes)
