"""Who this node is: machine id, boot id and incarnation (DESIGN section 4.1).

- Machine id: the SMBIOS system UUID (what a fence device reports for the
  machine it powers), or ``cluster.machine_id`` where there is none.
- Boot id: the kernel's, from ``/proc/sys/kernel/random/boot_id``.
- Incarnation: a counter in ``cluster.state_dir`` bumped, written and
  fsynced at every daemon start, before the first datagram leaves.

Invariants:
- The incarnation never repeats or goes backwards on one state directory:
  the new value is ``max(stored + 1, whole seconds of the wall clock)``.
  Seeding from the clock also keeps it above every earlier value when the
  state directory was lost, as long as the clock is sane; a file that cannot
  be read is an error, never silently replaced.
"""

from __future__ import annotations

import dataclasses
import json
import time
import uuid
from pathlib import Path

from ..config import Config
from ..persist import atomic_write_json, ensure_dir

BOOT_ID_PATH = Path("/proc/sys/kernel/random/boot_id")
PRODUCT_UUID_PATH = Path("/sys/class/dmi/id/product_uuid")
INCARNATION_FILE = "incarnation.json"
MAX_INCARNATION = 2**64 - 1  # the envelope's field


class IdentityError(Exception):
    """This node cannot establish its identity; the message says what to do."""


@dataclasses.dataclass(frozen=True)
class LocalIdentity:
    cluster: str
    node: str
    peer: str
    machine_id: str | None
    boot_id: str
    incarnation: int


def read_boot_id(path: Path = BOOT_ID_PATH) -> str:
    try:
        return str(uuid.UUID(path.read_text().strip()))
    except (OSError, ValueError) as e:
        raise IdentityError(f"cannot read the boot id from {path}: {e}") from None


def read_machine_id(override: str | None, path: Path = PRODUCT_UUID_PATH) -> str | None:
    """The configured override, else the SMBIOS system UUID, else None (no DMI here)."""
    if override is not None:
        return str(uuid.UUID(override))
    try:
        return str(uuid.UUID(path.read_text().strip()))
    except (OSError, ValueError):
        return None


def next_incarnation(state_dir: Path, boot_id: str, wall_now: float | None = None) -> int:
    """Bump, persist (fsync file and directory) and return the incarnation."""
    path = ensure_dir(state_dir) / INCARNATION_FILE
    stored = 0
    try:
        raw = json.loads(path.read_bytes())
        stored = raw["incarnation"]
        if not isinstance(stored, int) or isinstance(stored, bool) or stored < 0:
            raise ValueError(f"incarnation is {stored!r}")
    except FileNotFoundError:
        pass
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise IdentityError(
            f"{path} is unreadable ({e}); the incarnation must never go backwards. If the clock is "
            f"right, remove the file: the next incarnation is then taken from the clock") from None
    if stored >= MAX_INCARNATION:
        raise IdentityError(
            f"{path} holds incarnation {stored}: the next one would not fit the 64 bits of the heartbeat envelope, "
            f"so this daemon could never be heard. The file is corrupted; if the clock is right, remove it")
    now = time.time() if wall_now is None else wall_now
    incarnation = max(stored + 1, int(now))
    atomic_write_json(path, {"incarnation": incarnation, "boot_id": boot_id, "started_at": now})
    return incarnation


def establish(cfg: Config, *, product_uuid: Path = PRODUCT_UUID_PATH, boot_id_path: Path = BOOT_ID_PATH) -> LocalIdentity:
    c = cfg.cluster
    boot_id = read_boot_id(boot_id_path)
    try:
        incarnation = next_incarnation(c.state_dir, boot_id)
    except OSError as e:
        raise IdentityError(f"cannot persist the incarnation in {c.state_dir}: {e.strerror or e}") from None
    return LocalIdentity(c.name, c.node, c.peer, read_machine_id(c.machine_id, product_uuid), boot_id, incarnation)
