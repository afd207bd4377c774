"""Unsolicited IPv6 neighbour advertisements: the IPv6 counterpart of gratuitous ARP.

An advertisement for the floating address, with the Override flag and our
MAC as the target link-layer address, sent to all nodes (ff02::1) with hop
limit 255 (receivers drop neighbour discovery packets with any other), makes
neighbours that cached the address switch to our MAC. The kernel computes the
ICMPv6 checksum on raw ICMPv6 sockets.

Conflict detection for IPv6 is the kernel's duplicate address detection; see
``ip.py``.
"""

from __future__ import annotations

import ipaddress
import socket
import struct

from .arp import mac_bytes

ND_NEIGHBOR_ADVERT = 136
FLAG_OVERRIDE = 0x20000000
OPT_TARGET_LLADDR = 2
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
