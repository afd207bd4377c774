"""`clevervm status` with the daemon down: what this node can read on its own (issue 8).

DRBD (``drbdadm role/cstate/dstate``), the mount (mountinfo), the floating
address (netlink) and the managed VMs (libvirt), each with a short timeout;
a part that cannot be read says why. Nothing is changed.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

from . import config as config_mod
from .resources.filesystem import Filesystem
from .resources.ip import FloatingIp
from .resources.vmmonitor import list_managed

TIMEOUT = 5.0


def _drbd(cfg: config_mod.Config) -> dict[str, Any]:
    out: dict[str, Any] = {"resource": cfg.drbd.resource}
    for what in ("role", "cstate", "dstate"):
        try:
            r = subprocess.run([cfg.drbd.drbdadm, what, cfg.drbd.resource], capture_output=True, text=True, timeout=TIMEOUT,
                               check=False)
            out[what] = r.stdout.strip() if r.returncode == 0 else f"error: {(r.stderr or r.stdout).strip() or r.returncode}"
        except (OSError, subprocess.TimeoutExpired) as e:
            out[what] = f"error: {e}"
    return out


def _vms(cfg: config_mod.Config) -> dict[str, Any]:
    try:
        import libvirt

        conn = libvirt.openReadOnly(cfg.vms.uri)
    except Exception as e:  # noqa: BLE001 - libvirt raises its own error types; all mean "cannot read"
        return {"error": str(e)}
    try:
        return {"vms": {v.name: v.state for v in list_managed(cfg.vms, conn)}}
    except Exception as e:  # noqa: BLE001
        return {"error": str(e)}
    finally:
        conn.close()


def local_status(config_path: Path) -> dict[str, Any]:
    try:
        cfg = config_mod.load(config_path, check_files=False)
    except config_mod.ConfigError as e:
        return {"daemon_running": False, "error": e.report()}
    out: dict[str, Any] = {"daemon_running": False, "node": cfg.cluster.node, "peer": cfg.cluster.peer, "drbd": _drbd(cfg)}
    fs = Filesystem(cfg.filesystem)
    try:
        out["filesystem"] = {"mountpoint": str(cfg.filesystem.mountpoint), "mounted": fs.state().ours is not None}
    except Exception as e:  # noqa: BLE001
        out["filesystem"] = {"mountpoint": str(cfg.filesystem.mountpoint), "error": str(e)}
    try:
        out["ip"] = {"address": str(cfg.ip.address), "present": FloatingIp(cfg.ip).present()}
    except Exception as e:  # noqa: BLE001
        out["ip"] = {"address": str(cfg.ip.address), "error": str(e)}
    out["libvirt"] = _vms(cfg)
    return out


def render_local(st: dict[str, Any]) -> str:
    lines = ["*** clever-clusterd is NOT RUNNING on this node: what it can read locally ***"]
    if "error" in st:
        return "\n".join([*lines, st["error"]])
    d = st["drbd"]
    lines.append(f"Node {st['node']} (peer {st['peer']})")
    lines.append(f"DRBD {d['resource']}: role {d.get('role')}, connection {d.get('cstate')}, disks {d.get('dstate')}")
    fs = st["filesystem"]
    lines.append(f"Filesystem {fs['mountpoint']}: " + (("mounted here" if fs["mounted"] else "not mounted") if "mounted" in fs else fs["error"]))
    ip = st["ip"]
    lines.append(f"Floating IP {ip['address']}: " + (("here" if ip["present"] else "not here") if "present" in ip else ip["error"]))
    lv = st["libvirt"]
    if "error" in lv:
        lines.append(f"VMs: cannot read libvirt: {lv['error']}")
    else:
        lines += [f"VM {name}: {state}" for name, state in sorted(lv["vms"].items())] or ["VMs: none managed here"]
    return "\n".join(lines)
