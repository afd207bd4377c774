"""`clevervm status` with the daemon down: what this node can read on its own (issue 8).

DRBD (``drbdadm role/cstate/dstate``), the mount (mountinfo), the floating
address (netlink) and the managed VMs (libvirt), each with a short timeout;
a part that cannot be read says why. Nothing is changed. The banner
says "daemon not running"; `clevervm status` exits 3 with it.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import time
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


def _vms(cfg: config_mod.Config, mounted: bool) -> dict[str, Any]:
    try:
        import libvirt

        conn = libvirt.openReadOnly(cfg.vms.uri)
    except Exception as e:  # noqa: BLE001 - libvirt raises its own error types; all mean "cannot read"
        return {"error": str(e)}
    try:
        vms = {v.name: v.state for v in list_managed(cfg.vms, conn)}
    except Exception as e:  # noqa: BLE001
        return {"error": str(e)}
    finally:
        conn.close()
    # A save image lives on the replicated filesystem: only this node's mount can show it.
    images = {name: (Path(cfg.vms.save_dir) / f"{name}.save").exists() if mounted else None for name in vms}
    return {"vms": vms, "save_images": images}


def disk_usage(mountpoint: Path | str) -> dict[str, Any]:
    """Size, used, free (for unprivileged writers) and used percent as `df` shows them; OSError when unreadable."""
    st = os.statvfs(mountpoint)
    size, free = st.f_blocks * st.f_frsize, st.f_bavail * st.f_frsize
    used = size - st.f_bfree * st.f_frsize
    return {"size_bytes": size, "used_bytes": used, "free_bytes": free,
            "percent": round(100.0 * used / (used + free), 1) if used + free else 0.0}


def _usage(mountpoint: Path) -> dict[str, Any] | None:
    try:
        return disk_usage(mountpoint)
    except OSError:
        return None


def local_status(config_path: Path) -> dict[str, Any]:
    """What this node can read without its daemon (``clevervm status --json`` when the daemon is down)."""
    try:
        cfg = config_mod.load(config_path, check_files=False)
    except config_mod.ConfigError as e:
        return {"daemon_running": False, "error": e.report()}
    out: dict[str, Any] = {"daemon_running": False, "node": cfg.cluster.node, "peer": cfg.cluster.peer, "drbd": _drbd(cfg)}
    fs = Filesystem(cfg.filesystem)
    mounted = False
    try:
        mounted = fs.state().ours is not None
        out["filesystem"] = {"mountpoint": str(cfg.filesystem.mountpoint), "fstype": cfg.filesystem.fstype, "mounted": mounted,
                             "usage": _usage(cfg.filesystem.mountpoint) if mounted else None}
    except Exception as e:  # noqa: BLE001
        out["filesystem"] = {"mountpoint": str(cfg.filesystem.mountpoint), "fstype": cfg.filesystem.fstype, "error": str(e)}
    try:
        out["ip"] = {"address": str(cfg.ip.address), "present": FloatingIp(cfg.ip).present()}
    except Exception as e:  # noqa: BLE001
        out["ip"] = {"address": str(cfg.ip.address), "error": str(e)}
    out["libvirt"] = _vms(cfg, mounted)
    return out


def _g(d: Any, key: str) -> Any:
    return d.get(key) if isinstance(d, dict) else None


def _tri(part: Any, key: str, yes: str, no: str, failed: str) -> str:
    """A local reading: its error, yes, no, or not known."""
    if _g(part, "error"):
        return f"{failed}: {part['error']}"
    got = _g(part, key)
    return "not known" if got is None else (yes if got else no)


def render_local(st: dict[str, Any]) -> str:
    """The local view under its banner; a part that is missing or null shows as such, never a traceback."""
    lines = [f"*** daemon not running: clever-clusterd does not answer on this node; what {_g(st, 'node') or 'it'} "
             "can read locally follows ***"]
    if _g(st, "error"):
        return "\n".join([*lines, str(st["error"])])
    lines.append(f"Node {_g(st, 'node') or '-'} (peer {_g(st, 'peer') or '-'}); the peer's state is not known here")
    d = _g(st, "drbd")
    lines.append(f"DRBD {_g(d, 'resource') or '-'}: role {_g(d, 'role') or '-'}, connection {_g(d, 'cstate') or '-'}, "
                 f"disks {_g(d, 'dstate') or '-'}")
    fs = _g(st, "filesystem")
    where = _tri(fs, "mounted", "mounted here", "not mounted here", "cannot read the mount table")
    use = _g(fs, "usage")
    if isinstance(use, dict):
        pct = use.get("percent")
        where += (f"  size {_size(use.get('size_bytes'))} used {_size(use.get('used_bytes'))} free {_size(use.get('free_bytes'))} "
                  + (f"{pct:.0f}%" if isinstance(pct, (int, float)) else "-"))
    lines.append(f"Filesystem {_g(fs, 'mountpoint') or '-'} {_g(fs, 'fstype') or '-'}: {where}")
    ip = _g(st, "ip")
    lines.append(f"Floating IP {_g(ip, 'address') or '-'}: {_tri(ip, 'present', 'here', 'not here', 'cannot read')}")
    lv = _g(st, "libvirt")
    lines.append("Virtual machines:")
    vms = _g(lv, "vms")
    if _g(lv, "error") or not isinstance(vms, dict):
        lines.append(f"  cannot read libvirt: {_g(lv, 'error') or 'no answer'}")
    elif not vms:
        lines.append("  none managed here")
    else:
        images = _g(lv, "save_images") or {}
        for name, state in sorted(vms.items()):
            img = images.get(name) if isinstance(images, dict) else None
            save = "yes" if img else ("no" if img is False else "unknown (filesystem not mounted here)")
            lines.append(f"  Name: {name} State: {state} Managed save: {save}")
    return "\n".join(lines)


def _size(n: Any) -> str:
    if not isinstance(n, (int, float)):
        return "-"
    x = float(n)
    for unit in ("B", "K", "M", "G"):
        if x < 1024:
            return f"{x:.0f}{unit}" if unit in ("B", "K") else f"{x:.1f}{unit}"
        x /= 1024
    return f"{x:.1f}T"


class OfflineRefused(Exception):
    pass


def maintenance_on_offline(config_path: Path, unreachable: str) -> str:
    """`clevervm maintenance on --offline`: put the admin intent in maintenance while the daemon does not run.

    Used when moving from Pacemaker (docs/migration.md): the daemon's first
    start then only observes and adopts what runs. Only ``on`` exists offline
    (the safe direction), and only when no daemon answers: a daemon that
    runs would overwrite the file from its memory, so the control socket
    must be absent or refuse connections (a hung daemon still accepts).
    """
    from .heartbeat.intent import IntentError, IntentStore

    if not unreachable.startswith("daemon not running") and "Connection refused" not in unreachable:
        raise OfflineRefused(f"--offline only while the daemon is stopped; it is there but does not answer ({unreachable})")
    try:
        cfg = config_mod.load(config_path, check_files=False)
    except config_mod.ConfigError as e:
        raise OfflineRefused(e.report()) from None
    store = IntentStore(cfg.cluster.state_dir, cfg.cluster.node)
    try:
        rec = store.load()
        if rec.maintenance:
            return f"already in maintenance (admin intent version {rec.version} in {store.path}); nothing changed"
        new = store.change(lambda r: dataclasses.replace(r, maintenance=True), time.time())
    except (IntentError, OSError) as e:
        raise OfflineRefused(f"cannot write the admin intent: {e}") from None
    return (f"maintenance on written to {store.path} (admin intent version {new.version}); the daemon starts observing only, "
            "and adopts what runs; the peer takes the record when they meet")
