"""The configuration of clever-clusterd: schema, defaults, and whole-file checks.

Every option lives in exactly one place, here, with its default, unit and
meaning; ``config.example.toml`` and ``docs/configuration.md`` are checked
against this schema by the tests.

Invariants:
- :func:`load` either returns a complete, frozen :class:`Config` or raises
  :class:`ConfigError` listing *every* problem as ``section.key: problem``.
- Unsafe timing combinations are refused, never adjusted (DESIGN section 10).
- The key files are checked for existence, length, permissions and owner at load.
"""

from __future__ import annotations

import dataclasses
import hashlib
import ipaddress
import json
import os
import stat
import tomllib
import urllib.parse
from pathlib import Path
from typing import Any, Literal

from clever_cluster.fencing.stock import is_secret_option

from .schema import Problems, format_duration, load_section, opt

NAME_RE = r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}"
UUID_RE = r"[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}"
MIN_KEY_BYTES = 32

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPInterface = ipaddress.IPv4Interface | ipaddress.IPv6Interface


class ConfigError(Exception):
    """The configuration cannot be used; ``problems`` has one line per problem."""

    def __init__(self, path: Path | str, problems: list[str]) -> None:
        self.path = str(path)
        self.problems = list(problems)
        super().__init__(f"{self.path}: " + "; ".join(self.problems))

    def report(self) -> str:
        n = len(self.problems)
        head = f"{self.path}: {n} problem{'s' if n != 1 else ''}:"
        return "\n".join([head, *(f"  {p}" for p in self.problems)])


# --------------------------------------------------------------------------- sections


@dataclasses.dataclass(frozen=True, kw_only=True)
class ClusterConfig:
    name: str = opt(doc="Cluster name; both nodes must use the same one. Heartbeats from another cluster are dropped.", pattern=NAME_RE, example="vmcluster")
    node: str = opt(doc="This node's name (as the peer's `cluster.peer` names it).", pattern=NAME_RE, example="host1")
    peer: str = opt(doc="The other node's name.", pattern=NAME_RE, example="host2")
    key_file: Path = opt(doc="Shared secret for heartbeat HMAC-SHA256: at least 32 bytes, mode 0600 (not readable by group or others). Make one with `head -c 64 /dev/urandom > FILE`.", example="/etc/clever-cluster/cluster.key")
    next_key_file: Path | None = opt(None, "During a key rotation: the new key, accepted in addition to `key_file`.")
    state_dir: Path = opt(Path("/var/lib/clever-cluster"), "Persistent state: incarnation, epoch, admin intent, fence records.")
    runtime_dir: Path = opt(Path("/run/clever-cluster"), "Runtime files: the control socket `clevervm` talks to.")
    control_group: str | None = opt(None, "Group allowed to use the control socket (mode 0660); unset means root only (mode 0600).")
    preferred_node: str | None = opt(None, "At a cold start with both nodes equal, this node becomes active. Unset: the lower node name.")
    machine_id: str | None = opt(None, "This machine's id as published in the heartbeat and checked against what fence devices report. Unset: the SMBIOS system UUID (/sys/class/dmi/id/product_uuid). Set it only where there is none (some VMs, labs).", pattern=UUID_RE, example="4c4c4544-0042-3510-8053-b4c04f4e4d32")


@dataclasses.dataclass(frozen=True, kw_only=True)
class LinkConfig:
    name: str = opt(doc="Link name shown in status, logs and metrics (for example the interface: `bond0`, `lan`).", pattern=NAME_RE, example="bond0")
    local: IPAddress = opt(doc="This node's address on the link; heartbeats are received there.", example="10.0.1.1")
    peer: IPAddress = opt(doc="The peer's address on the link; heartbeats are sent there.", example="10.0.1.2")
    port: int | None = opt(None, "UDP port on this link (default `heartbeat.port`).", min=1, max=65535)


@dataclasses.dataclass(frozen=True, kw_only=True)
class HeartbeatConfig:
    interval: float = opt(0.1, "How often a heartbeat is sent on each link.", kind="duration", min=0.01, max=10.0)
    timeout: float = opt(1.0, "The peer is lost when nothing valid arrived on any link for this long. At least 3 x interval.", kind="duration", min=0.03, max=60.0)
    silent_peer_grace: float = opt(10.0, "A peer that is silent while DRBD is still Connected to it (its daemon hung or restarted) is not fenced for this long.", kind="duration", min=0.0, max=600.0)
    port: int = opt(5409, "Default UDP port for heartbeats.", min=1, max=65535)
    loss_window: float = opt(10.0, "Sliding window over which per-link loss is computed.", kind="duration", min=1.0, max=600.0)
    restart_announce: float = opt(30.0, "How long a restarting daemon tells its peer to expect it back (`restarting`).", kind="duration", min=1.0, max=600.0)
    link: tuple[LinkConfig, ...] = opt(doc="Heartbeat links, the replication (bonded) link first. At least one; two or more recommended.", nonempty=True)


@dataclasses.dataclass(frozen=True, kw_only=True)
class GatewayConfig:
    targets: tuple[str, ...] = opt(doc="Hosts pinged to score outside reachability (the default gateway, a core switch). At least one: the fence gate (S7) needs it.", nonempty=True, example=["192.168.1.1"])
    interval: float = opt(1.0, "How often each target is pinged.", kind="duration", min=0.1, max=300.0)
    timeout: float = opt(0.5, "How long to wait for each echo reply.", kind="duration", min=0.01, max=30.0)
    attempts: int = opt(3, "Echo requests per target per round; one reply makes the target reachable.", min=1, max=20)
    multiplier: int = opt(1, "Score = reachable targets x multiplier.", min=1, max=1000)
    dampen: float = opt(5.0, "A score change counts only after it has been stable this long (pingd's dampen).", kind="duration", min=0.0, max=600.0)


@dataclasses.dataclass(frozen=True, kw_only=True)
class DrbdConfig:
    resource: str = opt(doc="DRBD resource that holds the VMs' filesystem.", pattern=NAME_RE, example="r0")
    backend: Literal["auto", "drbd9", "drbd84"] = opt("auto", "DRBD version: detected from /proc/drbd and `drbdadm --version` when `auto`.")
    volume: int = opt(0, "Volume number within the resource (DRBD 9).", min=0, max=65535)
    drbdadm: str = opt("drbdadm", "drbdadm command (name on PATH or absolute path).", nonempty=True)
    drbdsetup: str = opt("drbdsetup", "drbdsetup command (name on PATH or absolute path).", nonempty=True)
    proc_drbd: Path = opt(Path("/proc/drbd"), "Where DRBD 8.4 state is read.")
    poll_interval: float = opt(0.5, "DRBD 8.4: how often /proc/drbd is read (DRBD 9 streams events).", kind="duration", min=0.05, max=60.0)
    command_timeout: float = opt(30.0, "Deadline for one drbdadm/drbdsetup command.", kind="duration", min=1.0, max=600.0)


@dataclasses.dataclass(frozen=True, kw_only=True)
class FilesystemConfig:
    device: Path = opt(doc="Block device to mount (the DRBD device).", example="/dev/drbd0")
    mountpoint: Path = opt(doc="Where the replicated filesystem is mounted.", example="/srv/vms")
    fstype: str = opt("ext4", "Filesystem type.", nonempty=True)
    options: str = opt("", "Mount options, comma separated (for example `noatime`).")
    fsck: bool = opt(False, "Run `fsck -p` before mounting.")
    force_unmount: bool = opt(True, "When the mount is busy on stop, end the processes using it (TERM, then KILL after `kill_grace`).")
    kill_grace: float = opt(5.0, "Time between TERM and KILL for processes that hold the mount.", kind="duration", min=0.0, max=300.0)
    mount_timeout: float = opt(60.0, "Deadline for fsck plus mount.", kind="duration", min=1.0, max=3600.0)
    unmount_timeout: float = opt(60.0, "Deadline for one unmount attempt.", kind="duration", min=1.0, max=3600.0)
    unmount_retries: int = opt(3, "Attempts at unmounting before the stop is reported as failed.", min=1, max=20)


@dataclasses.dataclass(frozen=True, kw_only=True)
class IpConfig:
    address: IPInterface = opt(doc="Floating address with prefix length.", example="192.168.1.50/24")
    interface: str = opt(doc="Interface the address is added to.", nonempty=True, example="eth0")
    arp_count: int = opt(5, "Gratuitous ARP (or unsolicited NA) packets sent after adding the address.", min=0, max=100)
    arp_interval: float = opt(0.2, "Spacing of the gratuitous ARP packets.", kind="duration", min=0.0, max=10.0)
    conflict_check: bool = opt(True, "On an unplanned takeover, refuse the address when another host still answers for it.")
    conflict_timeout: float = opt(0.5, "How long the conflict check waits for an answer to its ARP probes (IPv4).", kind="duration", min=0.05, max=10.0)


@dataclasses.dataclass(frozen=True, kw_only=True)
class VmsConfig:
    uri: str = opt("qemu:///system", "libvirt connection URI.", nonempty=True)
    domains: tuple[str, ...] = opt((), "Managed domains by name. Give either this or `name_prefix`.")
    name_prefix: str | None = opt(None, "Manage every defined domain whose name starts with this (for example `plc`).")
    save_dir: Path = opt(doc="Where VMs are saved for a handover; must be on the replicated filesystem (under `filesystem.mountpoint`).", example="/srv/vms/.clever-save")
    start_timeout: float = opt(120.0, "Deadline for starting (or restoring) one domain.", kind="duration", min=1.0, max=3600.0)
    save_timeout: float = opt(300.0, "Deadline for saving one domain.", kind="duration", min=1.0, max=3600.0)
    shutdown_timeout: float = opt(120.0, "After a failed save: how long a clean shutdown may take before the domain is destroyed.", kind="duration", min=1.0, max=3600.0)
    parallel: int = opt(4, "Domains started, saved or stopped at the same time.", min=1, max=64)
    poll_interval: float = opt(5.0, "How often domain states are read in addition to libvirt's events.", kind="duration", min=0.1, max=300.0)


@dataclasses.dataclass(frozen=True, kw_only=True)
class _DeviceBase:
    name: str = opt(doc="Device name for logs, status and metrics.", pattern=NAME_RE, example="bmc-host2")
    # 12 s: an IPMI/Redfish power-off typically takes 3-8 s, plus two verifying
    # reads 1 s apart and the login; and one such device in level 1 plus the
    # 1.1 s detection stays inside the default 15 s priority_delay.
    timeout: float = opt(12.0, "Budget for one operation on this device (power off and its verification). A level's budget is the sum of its devices'; keep the first level's budget plus detection below `fencing.priority_delay`.", kind="duration", min=1.0, max=600.0)


@dataclasses.dataclass(frozen=True, kw_only=True)
class IpmiDevice(_DeviceBase):
    type: Literal["ipmi"] = opt(doc="IPMI over LAN (RMCP+), through pyghmi.")
    host: str = opt(doc="BMC address.", nonempty=True, example="10.0.9.2")
    port: int = opt(623, "BMC UDP port.", min=1, max=65535)
    username: str = opt(doc="BMC user.", nonempty=True, example="fence")
    password: str | None = opt(None, "BMC password (prefer `password_file`).")
    password_file: Path | None = opt(None, "File holding the BMC password.")


@dataclasses.dataclass(frozen=True, kw_only=True)
class RedfishDevice(_DeviceBase):
    type: Literal["redfish"] = opt(doc="Redfish over HTTPS.")
    url: str = opt(doc="Service root, for example `https://10.0.9.2`.", nonempty=True, pattern=r"https?://\S+", example="https://10.0.9.2")
    system: str | None = opt(None, "ComputerSystem path (for example `/redfish/v1/Systems/1`); required when the service has more than one system.")
    username: str = opt(doc="Redfish user.", nonempty=True, example="fence")
    password: str | None = opt(None, "Password (prefer `password_file`).")
    password_file: Path | None = opt(None, "File holding the password.")
    verify_tls: bool = opt(True, "Verify the service's TLS certificate.")
    ca_file: Path | None = opt(None, "CA bundle for the service's certificate.")


@dataclasses.dataclass(frozen=True, kw_only=True)
class FenceAgentDevice(_DeviceBase):
    type: Literal["fence_agent"] = opt(doc="Any installed ClusterLabs fence agent (`fence_*`).")
    agent: str = opt(doc="Agent command, for example `fence_ipmilan`.", pattern=r"(/\S+/)?fence_[A-Za-z0-9_]+", example="fence_ipmilan")
    options: dict[str, str] = opt(doc="Agent options passed on stdin as key=value (no secrets here).", example={"ip": "10.0.9.2", "username": "fence", "lanplus": "1"})
    secret_file: Path | None = opt(None, "File of key=value lines (for example `password=...`) added to the agent's stdin.")
    machine_id: str = opt(doc="SMBIOS system UUID of the machine this device powers (stock agents cannot report it).", example="4c4c4544-0042-3510-8053-b4c04f4e4d32")


@dataclasses.dataclass(frozen=True, kw_only=True)
class LibvirtDevice(_DeviceBase):
    type: Literal["libvirt"] = opt(doc="The peer is a libvirt domain (labs, nested setups): destroy it.")
    uri: str = opt(doc="libvirt URI of the host that runs the peer.", nonempty=True, example="qemu+ssh://hypervisor/system")
    domain: str = opt(doc="Domain name of the peer node.", nonempty=True, example="host2")


@dataclasses.dataclass(frozen=True, kw_only=True)
class ManualDevice(_DeviceBase):
    type: Literal["manual"] = opt(doc="An operator confirms the peer is off with `clevervm confirm-fenced NODE`.")
    timeout: float = opt(86400.0, "How long to wait for the operator before the attempt is logged as still pending (it never turns into success).", kind="duration", min=1.0, max=31 * 86400.0)


FenceDevice = IpmiDevice | RedfishDevice | FenceAgentDevice | LibvirtDevice | ManualDevice


@dataclasses.dataclass(frozen=True, kw_only=True)
class FenceLevelConfig:
    device: tuple[FenceDevice, ...] = opt(doc="Devices of this level; all must confirm the peer off.", nonempty=True)


@dataclasses.dataclass(frozen=True, kw_only=True)
class FencingConfig:
    priority_delay: float = opt(15.0, "A standby waits this long before fencing a peer that was active, so a live active wins any fence race. Must exceed the peer's fence time.", kind="duration", min=0.0, max=600.0)
    random_delay: float = opt(2.0, "Random extra delay (0..this) added to `priority_delay`.", kind="duration", min=0.0, max=120.0)
    after: Literal["on", "off"] = opt("on", "After a confirmed fence, power the peer back on (`on`) or leave it off.")
    retry_backoff: float = opt(2.0, "First wait before a failed fence is retried; doubles up to `retry_backoff_max`.", kind="duration", min=0.1, max=600.0)
    retry_backoff_max: float = opt(60.0, "Longest wait between fence retries.", kind="duration", min=0.1, max=3600.0)
    monitor_interval: float = opt(300.0, "How often each fence device's health is checked (with jitter; never more often than once a minute).", kind="duration", min=60.0, max=86400.0)
    level: tuple[FenceLevelConfig, ...] = opt(doc="Fence levels, tried in order. At least one (use a `manual` device if nothing can power off the peer).", nonempty=True)


# A daemon restarted by systemd reopens the watchdog well within this; the
# watchdog's timeout must exceed it.
WATCHDOG_RESTART_ALLOWANCE = 15.0


@dataclasses.dataclass(frozen=True, kw_only=True)
class WatchdogConfig:
    enabled: bool = opt(False, "Use a local hardware watchdog as a self-fence backstop. An active node that lost its peer and every gateway for longer than `gateway.dampen` stops feeding it and resets (DESIGN 4.4).")
    device: Path = opt(Path("/dev/watchdog"), "Watchdog device.")
    timeout: float = opt(60.0, "Watchdog timeout; must outlast a daemon restart (more than 15s) and be at least 2 x `heartbeat.timeout`.", kind="duration", min=5.0, max=600.0)


@dataclasses.dataclass(frozen=True, kw_only=True)
class PolicyConfig:
    tick: float = opt(0.1, "The decision runs on every change and at least this often.", kind="duration", min=0.01, max=1.0)
    stall_threshold: float = opt(0.5, "A loop gap longer than this is a stall: re-observe for a full heartbeat timeout before fencing or promoting.", kind="duration", min=0.05, max=60.0)
    stickiness: bool = opt(True, "Keep the resources where they run when both nodes are healthy (no automatic fail-back).")
    migration_threshold: int = opt(3, "Failures of one VM on a node before it moves to the peer.", min=1, max=1000)
    failure_timeout: float = opt(600.0, "Fail counts expire after this long (0 = never).", kind="duration", min=0.0, max=30 * 86400.0)


@dataclasses.dataclass(frozen=True, kw_only=True)
class AlertConfig:
    name: str = opt(doc="Alert hook name.", pattern=NAME_RE, example="mail")
    program: Path = opt(doc="Program run with the event in CLEVER_ALERT_* environment variables.", example="/usr/local/bin/clever-alert-mail")
    timeout: float = opt(30.0, "Deadline for one run of the program.", kind="duration", min=1.0, max=600.0)
    kinds: tuple[str, ...] = opt((), "Only these alert kinds (empty: all).")


@dataclasses.dataclass(frozen=True, kw_only=True)
class MetricsConfig:
    listen: str = opt("127.0.0.1:9640", "Prometheus endpoint HOST:PORT; empty disables it.", kind="host_port")


@dataclasses.dataclass(frozen=True, kw_only=True)
class ConsoleConfig:
    listen: str = opt("", "Web console HOST:PORT (read by `clever-cluster-console`); empty disables it.", kind="host_port")
    password_file: Path | None = opt(None, "Salted password hash made by `clevervm console-password`; without it the console is read-only.")
    tls_cert: Path | None = opt(None, "TLS certificate for the console.")
    tls_key: Path | None = opt(None, "TLS private key for the console.")
    allowed_hosts: tuple[str, ...] = opt((), "Host names the console answers to besides IP addresses, `localhost` and this machine's own name (a defence against DNS rebinding).")


@dataclasses.dataclass(frozen=True, kw_only=True)
class LogConfig:
    level: Literal["debug", "info", "warning", "error"] = opt("info", "Log level.")
    target: Literal["auto", "journal", "stderr"] = opt("auto", "`auto`: journald when its socket exists, else stderr.")


@dataclasses.dataclass(frozen=True, kw_only=True)
class Config:
    cluster: ClusterConfig = opt(doc="Who we are.")
    heartbeat: HeartbeatConfig = opt(doc="Peer heartbeats.")
    gateway: GatewayConfig = opt(doc="Outside reachability.")
    drbd: DrbdConfig = opt(doc="The DRBD resource.")
    filesystem: FilesystemConfig = opt(doc="The replicated filesystem.")
    ip: IpConfig = opt(doc="The floating IP address.")
    vms: VmsConfig = opt(doc="The managed VMs.")
    fencing: FencingConfig = opt(doc="Fencing the peer.")
    watchdog: WatchdogConfig = opt(doc="Local hardware watchdog.")
    policy: PolicyConfig = opt(doc="Decision tuning.")
    alerts: tuple[AlertConfig, ...] = opt((), "Alert hooks (`[[alerts]]`).")
    metrics: MetricsConfig = opt(doc="Prometheus metrics.")
    console: ConsoleConfig = opt(doc="Web console.")
    log: LogConfig = opt(doc="Logging.")


# --------------------------------------------------------------------------- loading


def load(path: Path | str, *, check_files: bool = True) -> Config:
    """Read, parse and validate ``path``. Raises ConfigError with every problem."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise ConfigError(path, [f"cannot read the file: {e.strerror or e}"]) from None
    try:
        table = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise ConfigError(path, [f"not UTF-8 text: {e}"]) from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(path, [f"not valid TOML: {e}"]) from None
    return from_table(table, path, check_files=check_files)


def read_table(path: Path | str) -> dict[str, Any]:
    """The file parsed as TOML, not validated (for readers of a few keys). Raises ConfigError."""
    path = Path(path)
    try:
        return tomllib.loads(path.read_bytes().decode("utf-8"))
    except OSError as e:
        raise ConfigError(path, [f"cannot read the file: {e.strerror or e}"]) from None
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise ConfigError(path, [f"not valid TOML: {e}"]) from None


def runtime_dir_of(path: Path | str) -> Path:
    """Only ``cluster.runtime_dir`` of a file, for clevervm and the web console.

    clevervm must reach a running daemon even while the file on disk has an
    unrelated mistake (the daemon keeps running on the old configuration).
    """
    path = Path(path)
    table = read_table(path)
    value = table.get("cluster", {}).get("runtime_dir", str(ClusterConfig.__dataclass_fields__["runtime_dir"].default))
    if not isinstance(value, str) or not value:
        raise ConfigError(path, ["cluster.runtime_dir: must be a path as a non-empty string"])
    return Path(value)


def from_table(table: dict[str, Any], path: Path | str = "<config>", *, check_files: bool = True) -> Config:
    problems = Problems()
    cfg: Config = load_section(Config, table, "", problems)
    if problems:
        raise ConfigError(path, problems.items)
    _cross_check(cfg, problems)
    if check_files:
        _check_key_file(cfg.cluster.key_file, "cluster.key_file", problems)
        if cfg.cluster.next_key_file is not None:
            _check_key_file(cfg.cluster.next_key_file, "cluster.next_key_file", problems)
        _check_secret_files(cfg, problems)
    if problems:
        raise ConfigError(path, problems.items)
    return cfg


def _cross_check(cfg: Config, p: Problems) -> None:
    c, hb, gw, pol = cfg.cluster, cfg.heartbeat, cfg.gateway, cfg.policy
    d = format_duration
    if c.node == c.peer:
        p.add("cluster.peer", f"must differ from cluster.node ({c.node!r})")
    if c.preferred_node is not None and c.preferred_node not in (c.node, c.peer):
        p.add("cluster.preferred_node", f"must be {c.node!r} or {c.peer!r}, not {c.preferred_node!r}")

    # Timing, refused rather than adjusted (DESIGN section 10).
    if hb.timeout < 3 * hb.interval:
        p.add("heartbeat.timeout", f"must be at least 3 x heartbeat.interval ({d(3 * hb.interval)}), not {d(hb.timeout)}: fewer than three missed heartbeats would declare the peer lost")
    if hb.silent_peer_grace < hb.timeout:
        p.add("heartbeat.silent_peer_grace", f"must be at least heartbeat.timeout ({d(hb.timeout)}), not {d(hb.silent_peer_grace)}")
    if hb.loss_window < 10 * hb.interval:
        p.add("heartbeat.loss_window", f"must cover at least 10 heartbeats ({d(10 * hb.interval)}), not {d(hb.loss_window)}")
    if pol.tick > hb.interval:
        p.add("policy.tick", f"must not exceed heartbeat.interval ({d(hb.interval)}), not {d(pol.tick)}: a lost peer would be noticed late")
    if pol.stall_threshold >= hb.timeout:
        p.add("policy.stall_threshold", f"must be below heartbeat.timeout ({d(hb.timeout)}), not {d(pol.stall_threshold)}: a stall that long hides a lost peer")
    if pol.stall_threshold <= pol.tick:
        p.add("policy.stall_threshold", f"must exceed policy.tick ({d(pol.tick)}), not {d(pol.stall_threshold)}")
    if gw.timeout > gw.interval:
        p.add("gateway.timeout", f"must not exceed gateway.interval ({d(gw.interval)}), not {d(gw.timeout)}: rounds would overlap")
    if 0 < gw.dampen < gw.interval:
        p.add("gateway.dampen", f"must be 0 or at least gateway.interval ({d(gw.interval)}), not {d(gw.dampen)}")
    if cfg.fencing.retry_backoff_max < cfg.fencing.retry_backoff:
        p.add("fencing.retry_backoff_max", f"must be at least fencing.retry_backoff ({d(cfg.fencing.retry_backoff)})")
    if cfg.watchdog.enabled and cfg.watchdog.timeout < 2 * hb.timeout:
        p.add("watchdog.timeout", f"must be at least 2 x heartbeat.timeout ({d(2 * hb.timeout)}) when the watchdog is enabled")
    if cfg.watchdog.enabled and int(cfg.watchdog.timeout) <= WATCHDOG_RESTART_ALLOWANCE:
        p.add("watchdog.timeout", f"must be more than {d(WATCHDOG_RESTART_ALLOWANCE)} (whole seconds) when the watchdog is enabled, "
                                  f"or a daemon restart resets the node; not {d(cfg.watchdog.timeout)}")

    # Links.
    seen_names: set[str] = set()
    seen_local: set[tuple[str, int]] = set()
    for i, ln in enumerate(hb.link):
        where = f"heartbeat.link[{i}]"
        if ln.name in seen_names:
            p.add(f"{where}.name", f"duplicate link name {ln.name!r}")
        seen_names.add(ln.name)
        port = ln.port or hb.port
        if (str(ln.local), port) in seen_local:
            p.add(f"{where}.local", f"address {ln.local} port {port} is used by another link")
        seen_local.add((str(ln.local), port))
        if ln.local == ln.peer:
            p.add(f"{where}.peer", f"must differ from local ({ln.local})")
        if ln.local.version != ln.peer.version:
            p.add(f"{where}.peer", "local and peer must be the same address family")
    if any(cfg.ip.address.ip == ln.local or cfg.ip.address.ip == ln.peer for ln in hb.link):
        p.add("ip.address", f"{cfg.ip.address.ip} is also a heartbeat address")

    # Filesystem and VMs.
    fs = cfg.filesystem
    if not fs.mountpoint.is_absolute():
        p.add("filesystem.mountpoint", "must be an absolute path")
    elif fs.mountpoint == Path("/"):
        p.add("filesystem.mountpoint", "must not be /")
    if not fs.device.is_absolute():
        p.add("filesystem.device", "must be an absolute path")
    v = cfg.vms
    if bool(v.domains) == (v.name_prefix is not None):
        p.add("vms.domains", "give exactly one of vms.domains or vms.name_prefix")
    if v.name_prefix == "":
        p.add("vms.name_prefix", "must not be empty (it would match every domain)")
    if len(set(v.domains)) != len(v.domains):
        p.add("vms.domains", "lists a domain twice")
    if not _is_under(v.save_dir, fs.mountpoint):
        p.add("vms.save_dir", f"must be inside filesystem.mountpoint ({fs.mountpoint}) so saved VMs are replicated, not {v.save_dir}")

    # Fencing.
    dev_names: set[str] = set()
    for i, lvl in enumerate(cfg.fencing.level):
        for j, dev in enumerate(lvl.device):
            where = f"fencing.level[{i}].device[{j}]"
            if dev.name in dev_names:
                p.add(f"{where}.name", f"duplicate device name {dev.name!r}")
            dev_names.add(dev.name)
            if isinstance(dev, (IpmiDevice, RedfishDevice)) and (dev.password is None) == (dev.password_file is None):
                p.add(f"{where}.password_file", "give exactly one of password or password_file")
            if isinstance(dev, FenceAgentDevice):
                for k in dev.options:
                    if k == "action":
                        p.add(f"{where}.options.{k}", "the action is chosen by clever-cluster, not configured")
                    if is_secret_option(k):
                        p.add(f"{where}.options.{k}", "secrets belong in secret_file, not in the configuration")
            if isinstance(dev, RedfishDevice) and "@" in urllib.parse.urlsplit(dev.url).netloc:
                p.add(f"{where}.url", "must not hold credentials: use username and password_file")

    names: set[str] = set()
    for i, a in enumerate(cfg.alerts):
        if a.name in names:
            p.add(f"alerts[{i}].name", f"duplicate alert name {a.name!r}")
        names.add(a.name)
    con = cfg.console
    if (con.tls_cert is None) != (con.tls_key is None):
        p.add("console.tls_key", "give both console.tls_cert and console.tls_key, or neither")


def _is_under(child: Path, parent: Path) -> bool:
    try:
        rel = child.relative_to(parent)
    except ValueError:
        return False
    return rel != Path(".") and ".." not in rel.parts


def _check_key_file(path: Path, key: str, p: Problems) -> None:
    try:
        st = path.stat()
    except FileNotFoundError:
        p.add(key, f"{path} does not exist (make one with: head -c 64 /dev/urandom > {path}; chmod 600 {path})")
        return
    except OSError as e:
        p.add(key, f"cannot read {path}: {e.strerror}")
        return
    if not stat.S_ISREG(st.st_mode):
        p.add(key, f"{path} is not a regular file")
        return
    if st.st_mode & 0o077:
        p.add(key, f"{path} is accessible by group or others (mode {stat.S_IMODE(st.st_mode):04o}); run: chmod 600 {path}")
    if st.st_uid not in (0, os.geteuid()):  # its owner can read and rewrite it, whatever the mode
        p.add(key, f"{path} is owned by uid {st.st_uid}; only root (or the user running the daemon) may own it; "
                   f"run: chown root {path}")
    if st.st_size < MIN_KEY_BYTES:
        p.add(key, f"{path} holds {st.st_size} bytes; at least {MIN_KEY_BYTES} are required")


def _check_secret_files(cfg: Config, p: Problems) -> None:
    for i, lvl in enumerate(cfg.fencing.level):
        for j, dev in enumerate(lvl.device):
            for attr in ("password_file", "secret_file"):
                f = getattr(dev, attr, None)
                if f is None:
                    continue
                where = f"fencing.level[{i}].device[{j}].{attr}"
                try:
                    st = os.stat(f)
                except OSError as e:
                    p.add(where, f"cannot read {f}: {e.strerror}")
                    continue
                if st.st_mode & 0o007:
                    p.add(where, f"{f} is accessible by others (mode {stat.S_IMODE(st.st_mode):04o}); run: chmod 600 {f}")


# --------------------------------------------------------------------------- helpers


def read_key(path: Path) -> bytes:
    """The key bytes (whitespace at the ends is part of the key)."""
    return path.read_bytes()


def safety_fingerprint(cfg: Config) -> str:
    """A short hash of the settings both nodes must agree on.

    Differences are alerted and shown in ``status`` (DESIGN section 5). Node
    names are normalised (this/peer) so that both nodes compute the same
    value from their mirrored files.
    """
    hb, fe, pol = cfg.heartbeat, cfg.fencing, cfg.policy
    nodes = sorted([cfg.cluster.node, cfg.cluster.peer])
    relevant = {
        "cluster": [cfg.cluster.name, nodes, cfg.cluster.preferred_node],
        "heartbeat": [hb.interval, hb.timeout, hb.silent_peer_grace],
        "gateway": [cfg.gateway.dampen, cfg.gateway.multiplier],
        "drbd": [cfg.drbd.resource],
        "fencing": [fe.priority_delay, fe.random_delay, fe.after],
        "policy": [pol.stickiness, pol.migration_threshold, pol.failure_timeout],
        # save_dir relative to the mountpoint: labs on one machine mount at different paths.
        "resources": [str(cfg.ip.address), cfg.vms.domains, cfg.vms.name_prefix, str(cfg.vms.save_dir.relative_to(cfg.filesystem.mountpoint))],
    }
    blob = json.dumps(relevant, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def changed_sections(old: Config, new: Config) -> list[str]:
    """Top-level sections whose values differ, for the reload log line."""
    return [f.name for f in dataclasses.fields(Config) if getattr(old, f.name) != getattr(new, f.name)]


# Changing these needs a restart: they define identity and sockets.
RESTART_ONLY = ("cluster.name", "cluster.node", "cluster.peer", "cluster.state_dir", "cluster.runtime_dir", "heartbeat.link", "heartbeat.port", "drbd.resource")


def restart_only_changes(old: Config, new: Config) -> list[str]:
    out = []
    for dotted in RESTART_ONLY:
        sect, key = dotted.split(".")
        if getattr(getattr(old, sect), key) != getattr(getattr(new, sect), key):
            out.append(dotted)
    return out
