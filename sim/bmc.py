"""An IPMI BMC emulator (pyghmi's server side) run as its own process.

Run ``python -m clever_cluster.sim.bmc --port 0 --password-file F ...``; it
binds one address, 127.0.0.1 unless told (never all interfaces), prints ``PORT <n>`` on stdout once
it answers, and appends one JSON line per event (session-less: ``power_off``,
``power_on``, ``off_applied``...) to ``--events``, so a test can assert what
the BMC was asked to do and when the "machine" really went off.

Modes (``--mode``) reproduce the fence-device behaviours the agents must
survive:

- ``immediate``: chassis power off takes effect at once.
- ``delay:N``: acknowledged at once, the machine goes off N seconds later.
- ``stuck``: acknowledged, never goes off.
- ``refuse``: answers chassis control with completion code 0xD5
  ("not supported in present state").
- ``dies_after_ack``: acknowledges power off, then the BMC process exits
  (its machine stays on: the acknowledgement was all anyone got).

``--off-hook CMD`` runs CMD (split like a shell would, no shell) just before
the power state reads off, so a lab can make "power off" mean: links down
first, then the node's processes die; ``--on-hook CMD`` runs before it reads
on. ``--power-file F`` makes the machine's power state the content of F
(``on``/``off``, written by the lab), so a power loss that did not go
through this BMC reads off too. ``--address`` picks the address to bind
(127.0.0.1 by default; a lab gives a BMC its own address in a namespace).

pyghmi 1.6.19's client proposes cipher suite 17 while this server only
speaks suite 3 and answers as if it had accepted; we refuse non-SHA1
proposals with RMCP+ status 0x11 so the client falls back to suite 3 by its
own logic (see shared/reference/lab.md section 5).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pyghmi.ipmi.bmc as pyghmi_bmc
import pyghmi.ipmi.private.serversession as serversession
import pyghmi.ipmi.private.session as ipmisession

_original_open_session_response = serversession.ServerSession.create_open_session_response


def _sha1_only_open_session_response(self: Any, request: Any) -> Any:
    # request[12] is the proposed authentication algorithm; 1 = RAKP-HMAC-SHA1.
    if len(request) > 12 and request[12] != 1:
        self.clientsessionid = request[4:8]
        return bytearray([request[0], 0x11, 0, 0]) + self.clientsessionid
    return _original_open_session_response(self, request)


serversession.ServerSession.create_open_session_response = _sha1_only_open_session_response


class EmulatedBmc(pyghmi_bmc.Bmc):  # type: ignore[misc]
    """One BMC and the power of the machine behind it."""

    def __init__(self, authdata: dict[str, str], port: int, machine_uuid: uuid.UUID, mode: str,
                 events: Path | None, off_hook: list[str] | None, power: str, *, address: str = "127.0.0.1",
                 on_hook: list[str] | None = None, power_file: Path | None = None) -> None:
        super().__init__(authdata, port=port, bmcuuid=machine_uuid, address=address)
        self.machine_uuid = machine_uuid
        self.mode = mode
        self.events = events
        self.off_hook = off_hook
        self.on_hook = on_hook
        self.power_file = power_file
        self.powerstate = power
        self._lock = threading.Lock()

    def event(self, name: str, **fields: Any) -> None:
        if self.events is None:
            return
        line = json.dumps({"event": name, "t": time.time(), "mono": time.monotonic(), **fields})
        with self._lock, open(self.events, "a") as f:
            f.write(line + "\n")

    def get_system_guid(self) -> uuid.UUID:
        return self.machine_uuid

    def get_power_state(self) -> str:
        if self.power_file is not None:
            try:
                state = self.power_file.read_text().strip()
            except OSError:
                return self.powerstate
            if state in ("on", "off"):
                return state
        return self.powerstate

    def _apply_off(self) -> None:
        if self.off_hook:
            subprocess.run(self.off_hook, check=False)
        self.powerstate = "off"
        self.event("off_applied")

    def power_off(self) -> int | None:
        self.event("power_off", mode=self.mode)
        if self.mode == "refuse":
            return 0xD5
        if self.mode == "immediate":
            self._apply_off()
        elif self.mode.startswith("delay:"):
            threading.Timer(float(self.mode.split(":", 1)[1]), self._apply_off).start()
        elif self.mode == "dies_after_ack":
            # Let the acknowledgement leave, then vanish with the machine still on.
            threading.Timer(0.05, self._die).start()
        # "stuck": acknowledged, nothing happens.
        return None

    def _die(self) -> None:
        self.event("bmc_died")
        os._exit(0)

    def power_on(self) -> int | None:
        self.event("power_on")
        if self.mode == "refuse":
            return 0xD5
        if self.on_hook:
            subprocess.run(self.on_hook, check=False)
        self.powerstate = "on"
        return None

    def power_cycle(self) -> int:
        self.event("power_cycle")
        return 0xD5

    def power_reset(self) -> int:
        self.event("power_reset")
        return 0xD5

    def power_shutdown(self) -> int:
        self.event("power_shutdown")
        return 0xD5

    def is_active(self) -> bool:
        return bool(self.get_power_state() == "on")


def _parse_mode(mode: str) -> str:
    if mode in ("immediate", "stuck", "refuse", "dies_after_ack"):
        return mode
    if mode.startswith("delay:"):
        float(mode.split(":", 1)[1])
        return mode
    raise argparse.ArgumentTypeError(f"unknown mode {mode!r}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--address", default="127.0.0.1", help="address to bind (one address, never all interfaces)")
    ap.add_argument("--port", type=int, default=0, help="UDP port (0: any free port)")
    ap.add_argument("--user", default="admin")
    ap.add_argument("--password-file", type=Path, required=True, help="file holding the password (never on argv)")
    ap.add_argument("--uuid", type=uuid.UUID, default=None, help="the machine's system UUID")
    ap.add_argument("--mode", type=_parse_mode, default="immediate")
    ap.add_argument("--power", choices=("on", "off"), default="on", help="initial power state")
    ap.add_argument("--events", type=Path, default=None, help="append JSON lines of events here")
    ap.add_argument("--off-hook", default=None, help="command run when the power goes off")
    ap.add_argument("--on-hook", default=None, help="command run when the power goes on")
    ap.add_argument("--power-file", type=Path, default=None, help="the machine's power state (on/off) is read from this file")
    args = ap.parse_args(argv)
    if args.address in ("", "0.0.0.0", "::"):
        ap.error("--address must be one address, not all interfaces")
    password = args.password_file.read_text().rstrip("\n")
    bmc = EmulatedBmc({args.user: password}, args.port, args.uuid or uuid.uuid4(), args.mode, args.events,
                      shlex.split(args.off_hook) if args.off_hook else None, args.power, address=args.address,
                      on_hook=shlex.split(args.on_hook) if args.on_hook else None, power_file=args.power_file)
    port = bmc.serversocket.getsockname()[1]
    bmc.port = port
    bmc.event("started", port=port, mode=args.mode, power=args.power)
    print(f"PORT {port}", flush=True)
    while True:
        ipmisession.Session.wait_for_rsp(30)


if __name__ == "__main__":
    sys.exit(main())
