"""ARP frames on a raw packet socket: gratuitous announcements and conflict probes.

- An *announcement* (gratuitous ARP) is a broadcast request whose sender and
  target address are both the floating address; neighbours that have the
  address cached update it to our MAC (Linux does so for any existing entry).
- A *probe* (RFC 5227) asks "who has ADDR" with sender address 0.0.0.0, so it
  changes nobody's cache; a host that holds the address answers.

Blocking functions: callers run them in a worker thread. Sockets are opened
in the calling thread's network namespace.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import select
import socket
import struct
import time
from collections.abc import Callable

ETH_P_ARP = 0x0806
ETH_P_IP = 0x0800
PACKET_OUTGOING = 4
BROADCAST = b"\xff" * 6
ZERO_MAC = b"\x00" * 6
ZERO_IP = b"\x00" * 4
OP_REQUEST, OP_REPLY = 1, 2

_ARP = struct.Struct("!6s6sHHHBBH6s4s6s4s")  # ethernet header + ARP for IPv4 over Ethernet


def mac_bytes(mac: str) -> bytes:
    return bytes(int(x, 16) for x in mac.split(":"))


def mac_text(mac: bytes) -> str:
    return ":".join(f"{b:02x}" for b in mac)


def frame(op: int, src_mac: bytes, sender_ip: bytes, target_ip: bytes, dst_mac: bytes = BROADCAST,
          target_mac: bytes = ZERO_MAC) -> bytes:
    return _ARP.pack(dst_mac, src_mac, ETH_P_ARP, 1, ETH_P_IP, 6, 4, op, src_mac, sender_ip, target_mac, target_ip)


@dataclasses.dataclass(frozen=True)
class ArpPacket:
    op: int
    sender_mac: bytes
    sender_ip: bytes
    target_ip: bytes


def parse(data: bytes) -> ArpPacket | None:
    if len(data) < _ARP.size:
        return None
    _dst, _src, etype, htype, ptype, hlen, plen, op, sha, spa, _tha, tpa = _ARP.unpack_from(data)
    if etype != ETH_P_ARP or htype != 1 or ptype != ETH_P_IP or hlen != 6 or plen != 4:
        return None
    return ArpPacket(op=op, sender_mac=sha, sender_ip=spa, target_ip=tpa)


def open_socket(ifname: str) -> socket.socket:
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ARP))
    try:
        s.bind((ifname, ETH_P_ARP))
    except OSError:
        s.close()
        raise
    return s


def probe(ifname: str, mac: str, address: ipaddress.IPv4Address, timeout: float, probes: int = 2) -> str | None:
    """The MAC of another host that answers for ``address`` within ``timeout`` seconds, or None.

    A request claiming ``address`` from another MAC (someone announcing it)
    counts as an answer too.
    """
    own = mac_bytes(mac)
    ip = address.packed

    def answer(data: bytes) -> str | None:
        pkt = parse(data)
        return mac_text(pkt.sender_mac) if pkt is not None and pkt.sender_ip == ip and pkt.sender_mac != own else None

    with open_socket(ifname) as s:
        return ask(s, frame(OP_REQUEST, own, ZERO_IP, ip), answer, timeout, probes)


def ask(s: socket.socket, request: bytes, answer: Callable[[bytes], str | None], timeout: float, probes: int) -> str | None:
    """Send ``request`` ``probes`` times, spread over ``timeout`` seconds, on the packet socket ``s``;
    the first incoming frame that ``answer`` recognises gives the result, or None when none came."""
    start = time.monotonic()
    deadline = start + timeout
    next_probe, sent = start, 0
    while True:
        now = time.monotonic()
        if sent < probes and now >= next_probe:
            s.send(request)
            sent += 1
            next_probe = start + timeout * sent / probes
        if now >= deadline:
            return None
        wait = min(deadline, next_probe if sent < probes else deadline) - now
        ready, _, _ = select.select([s], [], [], max(0.0, wait))
        if not ready:
            continue
        data, addr = s.recvfrom(2048)
        if addr[2] == PACKET_OUTGOING:
            continue
        found = answer(data)
        if found is not None:
            return found
