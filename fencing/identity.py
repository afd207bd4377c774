"""The identity check: a fence device must prove it controls the peer.

A device is trusted (VERIFIED) only after both, in one check:
- the machine id it reports (IPMI system GUID, Redfish ``ComputerSystem.UUID``,
  libvirt domain UUID; for stock agents the configured one) equals the
  machine id the peer publishes in its heartbeat, and is not this node's own;
- it reads the machine ON while the peer is heard.

A reading of OFF while the peer still counts as heard proves nothing by
itself: a peer that has just lost power keeps counting as heard for up to a
heartbeat timeout. Such a check is UNVERIFIED with ``off_while_heard`` set; the
caller waits for the peer-loss detection time and settles it with
:func:`settle_off_reading`: still heard then (the peer ran after the device
read its machine OFF) is a MISMATCH; silent then is UNVERIFIED.

Invariants:
- A MISMATCH disables the device until the configuration changes (a new
  book is made at reload): it is never used for a power action again.
- A check that could not be completed (device unreachable, peer not heard,
  OFF read as the peer went silent) never downgrades a VERIFIED device, and
  never verifies one. Only an ON reading while the peer is heard verifies.
- A machine id that is not the peer's (or is this node's) is a MISMATCH at
  once; an OFF reading is one only once the peer is proven to have run after it.
- While an OFF reading taken with the peer heard is being settled, the device
  is not trusted (:meth:`IdentityBook.hold`): it could be a device that reads
  another machine, and a fence in that window would believe its OFF readings.
- Trust is bound to the peer's machine id it was verified against: if the
  peer publishes another machine id (hardware swapped), the device must be
  verified again.
- Manual devices need no identity: the operator's check is the proof.

Verified devices are remembered in ``<state_dir>/fence-identity.json`` so that
a daemon restarted during a peer loss can still use them; an entry counts only
for the same device description and peer machine id. The file is written only
when what it holds changes (not at every re-verification), and a write that
fails leaves the verdict in force in memory.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import logging
import uuid
from collections.abc import Callable
from pathlib import Path

from .agent import DeviceError, FenceAgent
from .durable import atomic_write
from .manual import ManualAgent
from .types import Deadline, PowerState, now_wall

log = logging.getLogger("clever_cluster.fencing")


class Trust(enum.Enum):
    UNVERIFIED = "unverified"
    VERIFIED = "verified"
    MISMATCH = "mismatch"


@dataclasses.dataclass(frozen=True)
class IdentityVerdict:
    device: str
    trust: Trust
    message: str
    reported: str | None = None
    peer_machine_id: str | None = None
    at: float = 0.0
    # Read OFF while the peer still counted as heard: to be settled by settle_off_reading().
    off_while_heard: bool = False


def _variants(value: str) -> set[str]:
    """The UUID and its byte-swapped form: some BMCs send the GUID in the
    other byte order (first three fields big- instead of little-endian)."""
    try:
        u = uuid.UUID(value.strip().strip("{}"))
    except ValueError:
        return {value.strip().lower()}
    return {str(u), str(uuid.UUID(bytes_le=u.bytes))}


def same_machine(a: str, b: str) -> bool:
    return bool(_variants(a) & _variants(b))


async def check_identity(agent: FenceAgent, *, peer_machine_id: str | None, own_machine_id: str, peer_heard: bool | Callable[[], bool],
                         deadline: Deadline) -> IdentityVerdict:
    """Run the identity check once (read-only: machine id and power status).

    ``peer_heard`` may be a callable: it is then asked again after an OFF
    reading (a peer already silent then may just have lost power). An OFF
    reading while the peer is still heard comes back UNVERIFIED with
    ``off_while_heard`` set: the caller settles it with :func:`settle_off_reading`.
    """
    name = agent.name
    heard: Callable[[], bool] = peer_heard if callable(peer_heard) else (lambda: bool(peer_heard))
    if isinstance(agent, ManualAgent):
        return IdentityVerdict(name, Trust.VERIFIED, "an operator's confirmation needs no device identity", at=now_wall())
    try:
        reported = await agent.machine_id(deadline)
    except DeviceError as e:
        return IdentityVerdict(name, Trust.UNVERIFIED, f"cannot read the machine id: {e.message}", at=now_wall())
    if same_machine(reported, own_machine_id):
        return IdentityVerdict(name, Trust.MISMATCH, f"reports this node's own machine id {reported}: it would power off this node",
                               reported, peer_machine_id, now_wall())
    if peer_machine_id is None:
        return IdentityVerdict(name, Trust.UNVERIFIED, "the peer's machine id is not known yet (not heard since start)", reported, None, now_wall())
    if not same_machine(reported, peer_machine_id):
        return IdentityVerdict(name, Trust.MISMATCH, f"reports machine id {reported}, but the peer publishes {peer_machine_id}",
                               reported, peer_machine_id, now_wall())
    if not heard():
        return IdentityVerdict(name, Trust.UNVERIFIED, "machine id matches; its power reading can be checked only while the peer is heard",
                               reported, peer_machine_id, now_wall())
    reading = await agent.status(deadline)
    if reading.outcome is not None:
        return IdentityVerdict(name, Trust.UNVERIFIED, f"machine id matches but the power read failed: {reading.detail}",
                               reported, peer_machine_id, now_wall())
    if reading.state is PowerState.OFF:
        if not heard():
            return IdentityVerdict(name, Trust.UNVERIFIED, f"reads the machine OFF ({reading.detail}) but the peer is not heard any more: "
                                                           "it may just have lost power", reported, peer_machine_id, now_wall())
        # Not a mismatch yet: the peer still counts as heard for up to a heartbeat
        # timeout after its machine loses power (see settle_off_reading).
        return IdentityVerdict(name, Trust.UNVERIFIED, f"reads the machine OFF ({reading.detail}) while the peer still counts as heard: "
                                                       "inconclusive until the peer is heard (or not) a heartbeat timeout later",
                               reported, peer_machine_id, now_wall(), off_while_heard=True)
    if reading.state is not PowerState.ON:
        return IdentityVerdict(name, Trust.UNVERIFIED, f"machine id matches; power reads {reading.detail}", reported, peer_machine_id, now_wall())
    return IdentityVerdict(name, Trust.VERIFIED, f"machine id {reported} matches the peer and it reads ON while the peer is heard",
                           reported, peer_machine_id, now_wall())


def settle_off_reading(verdict: IdentityVerdict, *, still_heard: bool, waited: float) -> IdentityVerdict:
    """The outcome of an OFF reading taken while the peer counted as heard, ``waited`` s later.

    Call it no sooner than the peer-loss detection time after the reading.
    ``still_heard``: the peer proved alive after the reading (best: a datagram
    it sent after the reading ended). Then it ran after its machine read OFF, so
    this device reads another machine (and would confirm a fence of a live
    peer): MISMATCH. Silent then: consistent with the peer losing power, but
    nothing was proven either way: UNVERIFIED (never trusted on its own).
    """
    if not verdict.off_while_heard:
        return verdict
    if still_heard:
        return dataclasses.replace(verdict, trust=Trust.MISMATCH, off_while_heard=False, at=now_wall(), message=(
            f"read the machine OFF while the peer was heard, and the peer was still heard after that reading (judged {waited:g}s later): "
            "it does not control the peer"))
    return dataclasses.replace(verdict, off_while_heard=False, at=now_wall(), message=(
        f"read the machine OFF, then the peer fell silent within {waited:g}s: consistent with a power loss, not a proof of identity"))


class IdentityBook:
    """Trust per device, for one configuration (make a new book at reload)."""

    FILENAME = "fence-identity.json"

    def __init__(self, devices: dict[str, str], state_dir: Path | None = None) -> None:
        """``devices``: device name -> description (kind and address, no secrets)."""
        self._describe = dict(devices)
        self._path = Path(state_dir) / self.FILENAME if state_dir is not None else None
        self._verdicts: dict[str, IdentityVerdict] = {}
        self._held: dict[str, IdentityVerdict] = {}  # OFF readings being settled: not trusted meanwhile
        self._load()
        self._saved = self._facts()

    def _load(self) -> None:
        if self._path is None:
            return
        try:
            data = json.loads(self._path.read_text())
        except (FileNotFoundError, ValueError):
            return
        if not isinstance(data, dict):
            return
        for name, entry in data.items():
            if not isinstance(entry, dict) or self._describe.get(name) != entry.get("describe"):
                continue
            if entry.get("trust") != Trust.VERIFIED.value or not isinstance(entry.get("peer_machine_id"), str):
                continue
            self._verdicts[name] = IdentityVerdict(name, Trust.VERIFIED, str(entry.get("message", "verified earlier")),
                                                   entry.get("reported"), entry["peer_machine_id"], float(entry.get("at", 0.0)))

    def _facts(self) -> dict[str, tuple[object, ...]]:
        """What the file must hold: the verified devices and what they were verified against."""
        return {n: (self._describe.get(n), v.reported, v.peer_machine_id)
                for n, v in self._verdicts.items() if v.trust is Trust.VERIFIED and n not in self._held}

    def _save(self) -> None:
        facts = self._facts()
        if self._path is None or facts == self._saved:
            return  # a re-verification changes nothing on disk: no write, no fsync on the event loop
        data = {n: {"trust": v.trust.value, "describe": self._describe.get(n), "reported": v.reported,
                    "peer_machine_id": v.peer_machine_id, "message": v.message, "at": v.at}
                for n, v in self._verdicts.items() if v.trust is Trust.VERIFIED and n not in self._held}
        try:
            atomic_write(self._path, (json.dumps(data, sort_keys=True, indent=1) + "\n").encode())
        except OSError as e:
            # The verdict holds in memory; a device that lost its trust here is
            # checked again before any power-off after a restart too.
            log.warning("cannot write %s: %s", self._path, e.strerror or e)
            return
        self._saved = facts

    def hold(self, verdict: IdentityVerdict) -> None:
        """Distrust the device until :meth:`record` (or :meth:`release`) folds in how ``verdict`` was settled.

        The file forgets the device's verification meanwhile: a book built by a reload or a restart
        during the settling (which cancels it) must not trust a device whose last reading was
        inconclusive; it is trusted again once a check verifies it."""
        self._held[verdict.device] = verdict
        self._save()

    def release(self, device: str) -> None:
        """End a hold whose settling was abandoned (the check was cancelled): the verdict in force stands."""
        self._held.pop(device, None)

    def record(self, verdict: IdentityVerdict) -> IdentityVerdict:
        """Fold a check result in; returns the device's verdict now in force."""
        self._held.pop(verdict.device, None)
        old = self._verdicts.get(verdict.device)
        if old is not None and old.trust is Trust.MISMATCH:
            return old  # disabled until the configuration changes
        if verdict.trust is Trust.UNVERIFIED and old is not None and old.trust is Trust.VERIFIED:
            self._save()  # back in the file if a hold had taken it out
            return old
        self._verdicts[verdict.device] = verdict
        if verdict.trust is Trust.VERIFIED or (old is not None and old.trust is Trust.VERIFIED):
            self._save()
        return verdict

    def verdict(self, device: str) -> IdentityVerdict:
        old = self._verdicts.get(device)
        if device in self._held and not (old is not None and old.trust is Trust.MISMATCH):
            return self._held[device]
        return old or IdentityVerdict(device, Trust.UNVERIFIED, "not checked yet")

    def trusted(self, device: str, peer_machine_id: str | None) -> bool:
        if device in self._held:
            return False
        v = self._verdicts.get(device)
        if v is None or v.trust is not Trust.VERIFIED:
            return False
        if v.peer_machine_id is None or peer_machine_id is None:
            # Manual devices; or the peer has not been heard since this daemon
            # started: the machine id it was verified against is the last one known.
            return True
        return same_machine(v.peer_machine_id, peer_machine_id)
