"""Builds the fencing objects from the daemon's configuration.

fencing/ does not import daemon/ (DESIGN 2), so its classes take plain
constructor inputs; this module is the one place that maps the ``[fencing]``
and ``[watchdog]`` sections onto them. Secrets are read here, from
``password``/``password_file``/``secret_file``, into
:class:`~clever_cluster.fencing.types.Secret` values that never print.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

from clever_cluster.fencing.agent import FenceAgent
from clever_cluster.fencing.coordinator import FenceCoordinator, FenceEvent
from clever_cluster.fencing.identity import IdentityBook
from clever_cluster.fencing.ipmi import IpmiAgent, IpmiParams
from clever_cluster.fencing.journal import FenceJournal
from clever_cluster.fencing.libvirt_agent import LibvirtAgent, LibvirtParams
from clever_cluster.fencing.manual import ManualAgent
from clever_cluster.fencing.monitor import DeviceMonitor
from clever_cluster.fencing.redfish import RedfishAgent, RedfishParams
from clever_cluster.fencing.stock import StockAgent, StockParams, read_secret_file
from clever_cluster.fencing.types import Secret
from clever_cluster.fencing.watchdog import LinuxWatchdog, SelfFenceGuard

from .config import (
    WATCHDOG_RESTART_ALLOWANCE,
    Config,
    FenceAgentDevice,
    FenceDevice,
    IpmiDevice,
    LibvirtDevice,
    ManualDevice,
    RedfishDevice,
)


def _password(password: str | None, password_file: Path | None) -> Secret:
    if password_file is not None:
        # One trailing newline is the editor's, not the password's.
        return Secret(password_file.read_bytes().removesuffix(b"\n"))
    return Secret((password or "").encode())


def build_agent(dev: FenceDevice, peer: str) -> FenceAgent:
    """One agent for one configured device. Raises OSError for unreadable secret files."""
    if isinstance(dev, IpmiDevice):
        return IpmiAgent(dev.name, IpmiParams(dev.host, dev.port, dev.username, _password(dev.password, dev.password_file)), timeout=dev.timeout)
    if isinstance(dev, RedfishDevice):
        return RedfishAgent(dev.name, RedfishParams(dev.url, dev.username, _password(dev.password, dev.password_file), dev.system,
                                                    dev.verify_tls, dev.ca_file), timeout=dev.timeout)
    if isinstance(dev, FenceAgentDevice):
        secrets = read_secret_file(dev.secret_file) if dev.secret_file is not None else {}
        return StockAgent(dev.name, StockParams(dev.agent, dict(dev.options), secrets, dev.machine_id, peer), timeout=dev.timeout)
    if isinstance(dev, LibvirtDevice):
        return LibvirtAgent(dev.name, LibvirtParams(dev.uri, dev.domain), timeout=dev.timeout)
    if isinstance(dev, ManualDevice):
        return ManualAgent(dev.name, peer, timeout=dev.timeout)
    raise TypeError(f"unknown fence device type {type(dev).__name__}")


def build_levels(cfg: Config) -> list[list[FenceAgent]]:
    return [[build_agent(d, cfg.cluster.peer) for d in lvl.device] for lvl in cfg.fencing.level]


def identity_book(cfg: Config, levels: list[list[FenceAgent]]) -> IdentityBook:
    return IdentityBook({a.name: f"{a.kind} {a.describe()}" for lvl in levels for a in lvl}, cfg.cluster.state_dir)


def build_coordinator(cfg: Config, levels: list[list[FenceAgent]], identity: IdentityBook, *, boot_id: str, own_machine_id: str,
                      gateway_gate: Callable[[], Awaitable[bool]], peer_heard: Callable[[], bool],
                      peer_machine_id: Callable[[], str | None],
                      on_event: Callable[[FenceEvent], None] | None = None) -> FenceCoordinator:
    fe = cfg.fencing
    return FenceCoordinator(node=cfg.cluster.node, boot_id=boot_id, own_machine_id=own_machine_id, target=cfg.cluster.peer,
                            levels=levels, journal=FenceJournal(cfg.cluster.state_dir), identity=identity,
                            gateway_gate=gateway_gate, peer_heard=peer_heard, peer_machine_id=peer_machine_id,
                            after=fe.after, retry_backoff=fe.retry_backoff, retry_backoff_max=fe.retry_backoff_max, on_event=on_event)


def build_monitor(cfg: Config, levels: list[list[FenceAgent]], identity: IdentityBook, *, own_machine_id: str,
                  peer_machine_id: Callable[[], str | None], peer_heard: Callable[[], bool],
                  last_checked: dict[str, float] | None = None,
                  peer_last_heard: Callable[[], float | None] | None = None) -> DeviceMonitor:
    return DeviceMonitor(levels, identity, own_machine_id=own_machine_id, peer_machine_id=peer_machine_id, peer_heard=peer_heard,
                         peer=cfg.cluster.peer, interval=cfg.fencing.monitor_interval, last_checked=last_checked,
                         peer_loss_detection=cfg.heartbeat.timeout + cfg.heartbeat.interval, peer_last_heard=peer_last_heard)


def build_watchdog(cfg: Config, entitled: Callable[[], bool]) -> SelfFenceGuard | None:
    """The local watchdog guard when ``[watchdog] enabled``; call ``arm()`` at start."""
    wd = cfg.watchdog
    if not wd.enabled:
        return None
    return SelfFenceGuard(LinuxWatchdog(wd.device), wd.timeout, entitled, restart_allowance=WATCHDOG_RESTART_ALLOWANCE)


def peer_level1_budget(levels: list[list[FenceAgent]]) -> float:
    """Our level-1 budget, used as the peer's (both nodes run mirrored configurations)."""
    return sum(a.timeout for a in levels[0]) if levels else 0.0
