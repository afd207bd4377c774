"""Helpers for the heartbeat tests: real configurations (configgen), sessions on a test clock."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from clever_cluster.daemon import config as config_mod
from clever_cluster.daemon.heartbeat.identity import LocalIdentity
from clever_cluster.daemon.heartbeat.intent import IntentStore
from clever_cluster.daemon.heartbeat.keys import load_keyring
from clever_cluster.daemon.heartbeat.model import NodeReport
from clever_cluster.daemon.heartbeat.replay import ReplayGuard
from clever_cluster.daemon.heartbeat.session import Session
from clever_cluster.daemon.heartbeat.wire import PROTOCOL_VERSION
from clever_cluster.sim import configgen


@dataclasses.dataclass
class Pair:
    dir: Path
    cfg1: config_mod.Config
    cfg2: config_mod.Config
    path1: Path
    path2: Path

    def cfg(self, i: int) -> config_mod.Config:
        return self.cfg1 if i == 1 else self.cfg2


def make_pair(workdir: Path, **kw: object) -> Pair:
    p1, p2 = configgen.write_pair(workdir, **kw)  # type: ignore[arg-type]
    return Pair(workdir, config_mod.load(p1), config_mod.load(p2), p1, p2)


@pytest.fixture
def pair(tmp_path: Path) -> Pair:
    return make_pair(tmp_path / "lab")


def make_session(cfg: config_mod.Config, incarnation: int, *, max_version: int = PROTOCOL_VERSION,
                 report: Callable[[], NodeReport] | None = None, boot_id: str = "00000000-0000-4000-8000-000000000001") -> Session:
    c = cfg.cluster
    ident = LocalIdentity(c.name, c.node, c.peer, c.machine_id, boot_id, incarnation)
    intent = IntentStore(c.state_dir, c.node)
    intent.load()
    return Session(cfg, ident, load_keyring(c), intent, ReplayGuard(c.state_dir, c.peer),
                   report or (lambda: NodeReport(phase="SECONDARY")), max_version=max_version, wall=lambda: 1.7e9)


class Clock:
    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t

    def advance(self, dt: float) -> float:
        self.t += dt
        return self.t


def exchange(a: Session, b: Session, now: float, links: Iterator[int] | None = None) -> None:
    """Every link, both directions, once."""
    for link in links or range(len(a.links)):
        b.receive(link, a.datagram(link, now), now)
        a.receive(link, b.datagram(link, now), now)
