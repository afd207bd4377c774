"""Network faults of the two-node lab, each recorded in the transition log.

Links are named as the daemons name them: ``hb0`` (the replication link),
``hb1`` (the second heartbeat path), ``lan`` (node to node over the LAN
switch in the gateway namespace).

- Drops are nftables rules at the netdev ingress/egress hooks of a node's
  interface (``Lab.loss``) or at the switch's bridge hooks: a dropped
  frame vanishes silently, as on a wire (an inet output drop would make
  ``sendto()`` fail with EPERM instead, reference/lab.md section 4). The
  carrier stays up.
- :meth:`Network.link_down` is a carrier loss instead (``ip link set down``).
- One-way faults drop only the IP packets that leave one node (its
  interface's egress, or one forwarding direction of the switch); ARP still
  passes, so the other direction keeps working. A two-way cut drops
  everything.
- Random loss uses ``numgen random mod 100``; bursts are cuts switched on
  and off by a thread (:class:`Bursts`).
"""

from __future__ import annotations

import threading
from typing import Any, Literal

from clever_cluster.sim.netns import TwoNodes

from .transitions import Recorder

Link = Literal["hb0", "hb1", "lan"]
LINKS: tuple[Link, ...] = ("hb0", "hb1", "lan")


class Network:
    def __init__(self, topo: TwoNodes, rec: Recorder) -> None:
        self.topo = topo
        self.lab = topo.lab
        self.rec = rec

    def _ns(self, node: int) -> str:
        return self.topo.node(node).ns

    @staticmethod
    def _check(link: str) -> None:
        if link not in LINKS:
            raise ValueError(f"unknown link {link!r}; links are {', '.join(LINKS)}")

    def _note(self, what: str, **fields: Any) -> None:
        self.rec.record("lab", "fault", what, **fields)

    # ------------------------------------------------------------------ cuts

    def cut(self, link: Link, *, one_way_from: int | None = None) -> None:
        """Drop every frame on ``link`` (both ways, or only those sent by node ``one_way_from``)."""
        self._check(link)
        if link == "lan":
            if one_way_from is None:
                self.topo.cut_lan_between_nodes()
            else:
                self.topo.cut_lan_one_way(one_way_from)
        elif one_way_from is None:
            self.lab.loss(self._ns(1), link, 100)
        else:
            self.lab.loss(self._ns(one_way_from), link, 100, ingress=False, ip_only=True)
        self._note(f"cut {link}" + (f" from node{one_way_from}" if one_way_from else ""), link=link)

    def heal(self, link: Link) -> None:
        """Undo cuts and loss on ``link`` (both directions, both ends)."""
        self._check(link)
        if link == "lan":
            self.topo.heal_lan_between_nodes()
            for i in (1, 2):
                self.topo.heal_lan_one_way(i)
                self.lab.clear_loss(self._ns(i), "eth0")
        else:
            for i in (1, 2):
                self.lab.clear_loss(self._ns(i), link)
        self._note(f"heal {link}", link=link)

    def link_down(self, link: Link, node: int = 1) -> None:
        """Carrier loss: the interface of ``node`` on ``link`` goes down (its peer sees NO-CARRIER)."""
        self._check(link)
        ifname = "eth0" if link == "lan" else link
        self.lab.down(self._ns(node), ifname)
        self._note(f"link down {link} at node{node}", link=link)

    def link_up(self, link: Link, node: int = 1) -> None:
        self._check(link)
        ifname = "eth0" if link == "lan" else link
        self.lab.up(self._ns(node), ifname)
        if link == "lan":  # a downed interface loses its routes
            self.lab.run(self._ns(node), "ip", "route", "replace", "default", "via", self.topo.gw_addr)
        self._note(f"link up {link} at node{node}", link=link)

    # ------------------------------------------------------------------ loss

    def loss(self, link: Link, percent: int, *, one_way_from: int | None = None, node: int = 1) -> None:
        """Random loss of ``percent`` % of frames on ``link``.

        hb0/hb1: at node 1's interface (both ways) or at ``one_way_from``'s
        egress. lan: at ``node``'s LAN interface (it also loses that share of
        its gateway traffic, like a bad cable).
        """
        self._check(link)
        if not 0 <= percent <= 100:
            raise ValueError("percent must be 0..100")
        if link == "lan":
            self.lab.loss(self._ns(node), "eth0", percent, ingress=one_way_from is None)
        elif one_way_from is None:
            self.lab.loss(self._ns(1), link, percent)
        else:
            self.lab.loss(self._ns(one_way_from), link, percent, ingress=False)
        self._note(f"loss {percent}% on {link}", link=link, percent=percent)

    def bursts(self, links: tuple[Link, ...], *, length: float, gap: float, count: int) -> Bursts:
        """Start ``count`` total cuts of ``links``, ``length`` s each, ``gap`` s apart (a thread; ``wait()`` it)."""
        for link in links:
            self._check(link)
        return Bursts(self, links, length, gap, count)

    # ------------------------------------------------------------------ outside

    def cut_gateway(self, node: int) -> None:
        """``node`` cannot reach the gateway any more; the LAN peer and the BMCs still can be reached."""
        self.topo.cut_gateway(node)
        self._note(f"gateway cut for node{node}")

    def heal_gateway(self, node: int) -> None:
        self.topo.heal_gateway(node)
        self._note(f"gateway healed for node{node}")

    def cut_uplink(self, node: int) -> None:
        """``node``'s switch port goes down: no gateway, no LAN peer, no BMC for it."""
        self.topo.cut_uplink(node)
        self._note(f"uplink cut for node{node}")

    def heal_uplink(self, node: int) -> None:
        self.topo.heal_uplink(node)
        self._note(f"uplink healed for node{node}")


class Bursts:
    """Total cuts switched on and off by a thread; each switch is recorded."""

    def __init__(self, net: Network, links: tuple[Link, ...], length: float, gap: float, count: int) -> None:
        self.net, self.links, self.length, self.gap, self.count = net, links, length, gap, count
        self._stop = threading.Event()
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="nodelab-bursts", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            for n in range(self.count):
                if n and self._stop.wait(self.gap):
                    return
                for link in self.links:
                    self.net.cut(link)
                stopped = self._stop.wait(self.length)
                for link in self.links:
                    self.net.heal(link)
                if stopped:
                    return
        except BaseException as e:  # noqa: BLE001 - reported by wait()
            self.error = e

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)

    def wait(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise TimeoutError("bursts still running")
        if self.error is not None:
            raise self.error
