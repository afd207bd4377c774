"""What the runtime persists in ``cluster.state_dir`` besides the parts' own files.

- ``policy-state.json``: the policy's ``Durable`` (epoch, episode, grants, the
  per-boot "peer heard" marker, the block, the operator counters), written
  atomically before the actions of the decision that changed it.
- ``fail-counts.json``: per VM, the failures counted on this node with the
  wall-clock time and boot id of the last one, and the serial of the last
  `clevervm cleanup` applied.

The heartbeat keeps the incarnation and the admin intent, the fencing
coordinator its fence records, the identity book its device verdicts.

Invariants:
- A file that exists but cannot be read is an error that stops the daemon
  (:class:`StateError`), never a silent fresh start: a lost epoch or block
  could promote stale data.
- Writes go through ``persist.atomic_write_json`` (temporary file, fsync,
  rename, directory fsync).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from clever_cluster import policy as P

from .persist import atomic_write_json, read_json

DURABLE_FILE = "policy-state.json"
FAIL_COUNTS_FILE = "fail-counts.json"
FORMAT = 1


class StateError(Exception):
    """A state file is unreadable; the message says which and what to do."""


# --------------------------------------------------------------------------- Durable


def _epoch(e: P.Epoch) -> list[Any]:
    return [e.counter, e.node]


def _epoch_in(v: Any) -> P.Epoch:
    counter, node = v
    if not isinstance(counter, int) or not isinstance(node, str):
        raise ValueError(f"bad epoch {v!r}")
    return P.Epoch(counter, node)


def _episode(e: P.LossEpisode | None) -> dict[str, Any] | None:
    return None if e is None else dataclasses.asdict(e)


def _episode_in(v: Any) -> P.LossEpisode | None:
    if v is None:
        return None
    return P.LossEpisode(str(v["peer"]), None if v["peer_incarnation"] is None else int(v["peer_incarnation"]),
                         None if v["peer_boot_id"] is None else str(v["peer_boot_id"]), int(v["counter"]))


def _grant(g: P.Grant | None) -> dict[str, Any] | None:
    if g is None:
        return None
    return {"grant_id": g.grant_id, "kind": g.kind.value, "grantor": g.grantor, "grantee": g.grantee,
            "grantor_incarnation": g.grantor_incarnation, "epoch": _epoch(g.epoch), "grantee_incarnation": g.grantee_incarnation}


def _grant_in(v: Any) -> P.Grant | None:
    if v is None:
        return None
    gi = v.get("grantee_incarnation")
    return P.Grant(str(v["grant_id"]), P.GrantKind(v["kind"]), str(v["grantor"]), str(v["grantee"]), int(v["grantor_incarnation"]),
                   _epoch_in(v["epoch"]), None if gi is None else int(gi))


def durable_to_json(d: P.Durable) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "epoch": _epoch(d.epoch), "peer_epoch_seen": _epoch(d.peer_epoch_seen),
        "episode_counter": d.episode_counter, "episode": _episode(d.episode), "episode_boot": d.episode_boot,
        "peer_heard_boot": d.peer_heard_boot,
        "block": None if d.block is None else {"cause": d.block.cause.value, "detail": d.block.detail},
        "grant_counter": d.grant_counter, "grant_out": _grant(d.grant_out), "grant_ack": _grant(d.grant_ack),
        "declined": d.declined, "carried_on": d.carried_on, "unblock_seen": d.unblock_seen, "fence_seen": d.fence_seen,
    }


def _opt_str(v: Any) -> str | None:
    return None if v is None else str(v)


def durable_from_json(v: Any) -> P.Durable:
    """Raises ValueError (or KeyError/TypeError) for anything that is not a Durable of this format."""
    if not isinstance(v, dict) or v.get("format") != FORMAT:
        raise ValueError(f"unknown format {v.get('format') if isinstance(v, dict) else v!r}")
    block = v["block"]
    return P.Durable(
        epoch=_epoch_in(v["epoch"]), peer_epoch_seen=_epoch_in(v["peer_epoch_seen"]),
        episode_counter=int(v["episode_counter"]), episode=_episode_in(v["episode"]), episode_boot=_opt_str(v["episode_boot"]),
        peer_heard_boot=_opt_str(v["peer_heard_boot"]),
        block=None if block is None else P.Block(P.BlockCause(block["cause"]), str(block["detail"])),
        grant_counter=int(v["grant_counter"]), grant_out=_grant_in(v["grant_out"]), grant_ack=_grant_in(v["grant_ack"]),
        declined=_opt_str(v["declined"]), carried_on=_opt_str(v["carried_on"]),
        unblock_seen=int(v["unblock_seen"]), fence_seen=int(v["fence_seen"]),
    )


class DurableStore:
    def __init__(self, state_dir: Path) -> None:
        self.path = Path(state_dir) / DURABLE_FILE

    def load(self) -> P.Durable:
        try:
            raw = read_json(self.path)
        except (OSError, ValueError) as e:
            raise StateError(f"{self.path} is unreadable ({e}); the epoch and the block it holds must not be lost. "
                             "Restore it from a backup, or move it away only if this node's disk is to be resynced "
                             "from the peer") from None
        if raw is None:
            return P.Durable()
        try:
            return durable_from_json(raw)
        except (ValueError, KeyError, TypeError) as e:
            raise StateError(f"{self.path}: not a policy state of format {FORMAT}: {e}") from None

    def save(self, d: P.Durable) -> None:
        atomic_write_json(self.path, durable_to_json(d))


# --------------------------------------------------------------------------- fail counts


@dataclasses.dataclass(frozen=True)
class FailCount:
    count: int
    last_wall: float
    boot_id: str


class FailCounts:
    """Per VM failures on this node; ``failure_timeout`` is applied by the policy (from ``last_wall``)."""

    def __init__(self, state_dir: Path) -> None:
        self.path = Path(state_dir) / FAIL_COUNTS_FILE
        self.counts: dict[str, FailCount] = {}
        self.cleanup_seen = 0

    def load(self) -> None:
        try:
            raw = read_json(self.path)
        except (OSError, ValueError) as e:
            raise StateError(f"{self.path} is unreadable ({e}); move it away to start with no fail counts") from None
        if raw is None:
            return
        try:
            if raw.get("format") != FORMAT:
                raise ValueError(f"unknown format {raw.get('format')!r}")
            self.counts = {str(k): FailCount(int(v["count"]), float(v["last_wall"]), str(v["boot_id"])) for k, v in raw["vms"].items()}
            self.cleanup_seen = int(raw.get("cleanup_seen", 0))
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise StateError(f"{self.path}: not a fail-count file of format {FORMAT}: {e}") from None

    def _save(self) -> None:
        atomic_write_json(self.path, {"format": FORMAT, "cleanup_seen": self.cleanup_seen,
                                      "vms": {k: dataclasses.asdict(v) for k, v in sorted(self.counts.items())}})

    def add(self, vm: str, wall: float, boot_id: str) -> int:
        old = self.counts.get(vm)
        n = (old.count if old is not None else 0) + 1
        self.counts[vm] = FailCount(n, wall, boot_id)
        self._save()
        return n

    def apply_cleanup(self, serial: int, at: float, resource: str | None) -> list[str]:
        """`clevervm cleanup` (replicated in the admin intent): clear counts recorded before ``at``."""
        if serial <= self.cleanup_seen:
            return []
        cleared = [vm for vm, c in self.counts.items() if (resource is None or resource == vm) and c.last_wall <= at]
        for vm in cleared:
            del self.counts[vm]
        self.cleanup_seen = serial
        self._save()
        return cleared

    def as_tuples(self) -> tuple[tuple[str, int, float], ...]:
        return tuple((vm, c.count, c.last_wall) for vm, c in sorted(self.counts.items()))
