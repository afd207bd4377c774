"""Generate a matching pair of node configurations and a key for labs and tests.

The same generator feeds the demo, the tests and the benchmarks, so that
they all run the configuration format that operators use.
"""

from __future__ import annotations

import contextlib
import dataclasses
import ipaddress
import os
import socket
import uuid
from pathlib import Path
from typing import Any


@dataclasses.dataclass
class NodeSpec:
    name: str
    links: list[tuple[str, str, str]]  # (link name, local address, peer address)
    state_dir: Path
    runtime_dir: Path
    metrics_listen: str = ""
    machine_id: str | None = None  # labs: a distinct id per simulated node (no SMBIOS UUID here)


def write_key(path: Path, size: int = 64) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, os.urandom(size))
    finally:
        os.close(fd)
    return path


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{k} = {_toml_value(x)}" for k, x in v.items()) + " }"
    return '"' + str(v).replace("\\", "\\\\").replace('"', '\\"') + '"'


def render(table: dict[str, Any]) -> str:
    """Render a nested dict as TOML (tables, arrays of tables, scalars)."""
    out: list[str] = []

    def emit(prefix: str, t: dict[str, Any], array: bool = False) -> None:
        scalars = {k: v for k, v in t.items() if not _is_table(v) and not _is_table_array(v)}
        if prefix:
            out.append(f"[[{prefix}]]" if array else f"[{prefix}]")
        for k, v in scalars.items():
            out.append(f"{k} = {_toml_value(v)}")
        out.append("")
        for k, v in t.items():
            name = f"{prefix}.{k}" if prefix else k
            if _is_table(v):
                emit(name, v)
            elif _is_table_array(v):
                for item in v:
                    emit(name, item, array=True)

    emit("", table)
    return "\n".join(out)


def _is_table(v: Any) -> bool:
    return isinstance(v, dict)


def _is_table_array(v: Any) -> bool:
    return isinstance(v, list) and bool(v) and all(isinstance(x, dict) for x in v)


def node_table(
    *,
    cluster: str,
    me: NodeSpec,
    peer: NodeSpec,
    key_file: Path,
    workdir: Path,
    overrides: dict[str, dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """A complete configuration for ``me`` as a dict (sections → keys)."""
    t: dict[str, Any] = {
        "cluster": {
            "name": cluster,
            "node": me.name,
            "peer": peer.name,
            "key_file": str(key_file),
            "state_dir": str(me.state_dir),
            "runtime_dir": str(me.runtime_dir),
            **({"machine_id": me.machine_id} if me.machine_id else {}),
        },
        "heartbeat": {
            "link": [{"name": n, "local": loc, "peer": rem} for (n, loc, rem) in me.links],
        },
        "gateway": {"targets": ["127.0.0.1"]},
        "drbd": {"resource": "r0"},
        "filesystem": {"device": str(workdir / "drbd0"), "mountpoint": str(workdir / "mnt")},
        "ip": {"address": "192.0.2.50/24", "interface": "lo"},
        "vms": {"uri": "test:///default", "name_prefix": "plc", "save_dir": str(workdir / "mnt" / ".clever-save")},
        "fencing": {"level": [{"device": [{"type": "manual", "name": "operator"}]}]},
        "metrics": {"listen": me.metrics_listen},
        "log": {"target": "stderr"},
    }
    for section, keys in (overrides or {}).items():
        t.setdefault(section, {}).update(keys)
    return t


def free_udp_port(addresses: list[str], tries: int = 50) -> int:
    """A UDP port that is free on every one of ``addresses`` right now (for loopback labs
    sharing the host's network namespace with other test runs)."""
    for _ in range(tries):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.bind((addresses[0], 0))
            port = int(probe.getsockname()[1])
            with contextlib.ExitStack() as stack:
                try:
                    for a in addresses[1:]:
                        s = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
                        s.bind((a, port))
                except OSError:
                    continue
                return port
    raise OSError(f"no UDP port free on all of {addresses}")


def write_pair(workdir: Path, *, cluster: str = "democluster", overrides: dict[str, dict[str, Any]] | None = None,
               links: list[tuple[str, str, str]] | None = None, port: int | None = None) -> tuple[Path, Path]:
    """Write node1.toml and node2.toml (and a key) into ``workdir`` for a loopback lab.

    ``links`` gives node1's view (name, node1 address, node2 address); node2's is mirrored.
    Each node gets its own machine id. With loopback links and no ``port``, the
    heartbeat port is one that is free on every link address (concurrent test
    runs share the host's loopback); otherwise ``port`` or the default.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    key = write_key(workdir / "cluster.key")
    links = links or [("lo1", "127.0.0.11", "127.0.0.12"), ("lo2", "127.0.0.21", "127.0.0.22")]
    addrs = [a for (_n, x, y) in links for a in (x, y)]
    if port is None and all(ipaddress.ip_address(a).is_loopback for a in addrs):
        port = free_udp_port(addrs)
    if port is not None:
        overrides = {**(overrides or {}), "heartbeat": {"port": port, **(overrides or {}).get("heartbeat", {})}}
    n1 = NodeSpec("node1", links, workdir / "node1" / "state", workdir / "node1" / "run", machine_id=str(uuid.uuid4()))
    n2 = NodeSpec("node2", [(n, b, a) for (n, a, b) in links], workdir / "node2" / "state", workdir / "node2" / "run",
                  machine_id=str(uuid.uuid4()))
    paths = []
    for me, peer in ((n1, n2), (n2, n1)):
        table = node_table(cluster=cluster, me=me, peer=peer, key_file=key, workdir=workdir / me.name, overrides=overrides)
        p = workdir / f"{me.name}.toml"
        p.write_text(render(table))
        paths.append(p)
    return paths[0], paths[1]
