"""libvirt test-driver node files for tests and labs.

:func:`write_node` writes a ``<node>`` document for ``test:///PATH`` (or for
a private libvirtd serving the test driver): a host with the given domains,
each with a stable UUID derived from its name (the test driver would invent
a new one on every open otherwise) and a preset state.

Remember the test driver's own rules (reference/lab.md section 2): each
``open()`` of a file URI parses the file again, so two connections do not
share state; keep one connection per simulated node.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping
from pathlib import Path
from xml.sax.saxutils import escape

_NS = uuid.UUID("6b1d7f0e-4a3c-4d1e-9a57-0c1e2f3a4b5c")
RUNNING, PAUSED, SHUTOFF = 1, 3, 5


def domain_uuid(name: str) -> str:
    return str(uuid.uuid5(_NS, name))


def domain_xml(name: str, *, state: int | None = None, disk: Path | None = None) -> str:
    """One test-driver domain with a stable UUID; ``state`` presets it (node files only)."""
    devices = ("    <devices><disk type='file' device='disk'>"
               f"<source file='{escape(str(disk))}'/><target dev='vda'/></disk></devices>\n") if disk else ""
    runstate = f"    <test:runstate>{state}</test:runstate>\n" if state is not None else ""
    return ("  <domain type='test'>\n"
            f"    <name>{escape(name)}</name>\n    <uuid>{domain_uuid(name)}</uuid>\n"
            "    <memory>4096</memory>\n    <vcpu>1</vcpu>\n    <os><type>hvm</type></os>\n"
            + runstate + devices + "  </domain>\n")


def node_xml(domains: Iterable[tuple[str, int]], disks: Mapping[str, Path] | None = None) -> str:
    """A node document; ``domains`` are (name, libvirt state) pairs, ``disks`` an optional file disk per domain."""
    doms = [domain_xml(name, state=state, disk=(disks or {}).get(name)) for name, state in domains]
    return ("<node xmlns:test='http://libvirt.org/schemas/domain/test/1.0'>\n"
            "  <cpu><nodes>1</nodes><sockets>1</sockets><cores>2</cores><threads>1</threads><mhz>2000</mhz><model>sim</model></cpu>\n"
            "  <memory>16777216</memory>\n" + "".join(doms) + "</node>\n")


def write_node(path: Path, domains: Iterable[tuple[str, int]], disks: Mapping[str, Path] | None = None) -> str:
    """Write the node file and return its ``test:///`` URI."""
    path = Path(path).resolve()
    path.write_text(node_xml(domains, disks))
    return f"test://{path}"
