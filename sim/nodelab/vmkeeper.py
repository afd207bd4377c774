"""A node's libvirt keeper: holds the test driver's state for the node's lifetime and logs every VM transition.

Run on a lab node as ``python vmkeeper.py --uri URI --node NAME --log FILE
--ready FILE --managed plc1,plc2 --unmanaged tools``. It opens the node's
libvirtd (``test+unix:///default?socket=...``) and keeps that connection
open: libvirtd's test driver keeps its domains only while a connection
stays open (reference/lab.md section 3), so VM state survives a daemon crash
and is lost with the node's power, as on a real host.

At start (a freshly booted node) it replaces the test driver's sample domain
with the lab's: the managed domains defined and shut off, the unmanaged ones
running. Then it records every lifecycle event of every domain as a ``vm``
record (``sim.nodelab.transitions``) stamped with ``time.monotonic()`` when
the event arrives: ``active`` after started, resumed, suspended or
shutting down (a paused domain still holds its disks), ``inactive`` after
stopped, plus ``defined``/``undefined``.

It exits when the connection to libvirtd closes (libvirtd died: the state is
gone). Standard library and libvirt only: it must start fast.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

import libvirt

from clever_cluster.sim.libvirt_nodes import domain_xml
from clever_cluster.sim.nodelab.transitions import Recorder

EVENTS = {
    libvirt.VIR_DOMAIN_EVENT_DEFINED: ("DEFINED", "defined"),
    libvirt.VIR_DOMAIN_EVENT_UNDEFINED: ("UNDEFINED", "undefined"),
    libvirt.VIR_DOMAIN_EVENT_STARTED: ("STARTED", "active"),
    libvirt.VIR_DOMAIN_EVENT_SUSPENDED: ("SUSPENDED", "active"),
    libvirt.VIR_DOMAIN_EVENT_RESUMED: ("RESUMED", "active"),
    libvirt.VIR_DOMAIN_EVENT_STOPPED: ("STOPPED", "inactive"),
    libvirt.VIR_DOMAIN_EVENT_SHUTDOWN: ("SHUTDOWN", "active"),
    libvirt.VIR_DOMAIN_EVENT_PMSUSPENDED: ("PMSUSPENDED", "active"),
    libvirt.VIR_DOMAIN_EVENT_CRASHED: ("CRASHED", "active"),
}


def _open(uri: str, timeout: float) -> libvirt.virConnect:
    deadline = time.monotonic() + timeout
    while True:
        try:
            return libvirt.open(uri)
        except libvirt.libvirtError:
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.05)


def set_up(conn: libvirt.virConnect, managed: list[str], unmanaged: list[str]) -> None:
    """A freshly booted node's domains: the lab's, and nothing else."""
    wanted = set(managed) | set(unmanaged)
    for dom in conn.listAllDomains():
        if dom.name() not in wanted:
            if dom.isActive():
                dom.destroy()
            dom.undefine()
    for name in [*managed, *unmanaged]:
        try:
            dom = conn.lookupByName(name)
        except libvirt.libvirtError:
            dom = conn.defineXML(domain_xml(name))
        if name in unmanaged and not dom.isActive():
            dom.create()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--uri", required=True)
    ap.add_argument("--node", required=True)
    ap.add_argument("--log", type=Path, required=True, help="transition log file to append to")
    ap.add_argument("--ready", type=Path, required=True, help="written once the domains are set up and events flow")
    ap.add_argument("--managed", default="", help="comma-separated managed domains (defined, shut off)")
    ap.add_argument("--unmanaged", default="", help="comma-separated unmanaged domains (running)")
    args = ap.parse_args(argv)
    managed = [d for d in args.managed.split(",") if d]
    unmanaged = [d for d in args.unmanaged.split(",") if d]
    rec = Recorder(args.log, "libvirt")
    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
    libvirt.virEventRegisterDefaultImpl()
    conn = _open(args.uri, 30.0)
    set_up(conn, managed, unmanaged)

    def lifecycle(_conn: Any, dom: Any, event: int, detail: int, _opaque: Any) -> None:
        t = time.monotonic()
        name, value = EVENTS.get(event, (f"EVENT{event}", "unknown"))
        rec.record(args.node, "vm", value, t=t, domain=dom.name(), event=f"{name}:{detail}")

    closed = threading.Event()

    def on_close(_conn: Any, reason: int, _opaque: Any) -> None:
        rec.record(args.node, "keeper", "connection closed", reason=reason)
        closed.set()

    conn.domainEventRegisterAny(None, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, lifecycle, None)
    conn.registerCloseCallback(on_close, None)
    for dom in conn.listAllDomains():
        rec.record(args.node, "vm", "active" if dom.isActive() else "inactive", domain=dom.name(), event="at boot")
    args.ready.write_text(str(os.getpid()))
    while not closed.is_set():
        libvirt.virEventRunDefaultImpl()
    return 1


if __name__ == "__main__":
    sys.exit(main())
