"""One IPMI session in its own process: ``python -m clever_cluster.fencing.ipmi_worker``.

pyghmi keeps its sessions in process-wide tables driven by one I/O thread;
used from several threads at once they are not safe (we saw a KeyError), and
a session to a dead BMC holds them up for seconds. So each IPMI operation of
:mod:`.ipmi` runs pyghmi in a worker process of its own: a fresh session
per operation for certain, and a hung one is ended by killing the process.

Protocol, JSON lines on stdin/stdout: the first line is the login
``{"host", "port", "user", "password_b64"}`` (the password never travels in
argv or the environment), answered ``{"ok": true}``; then one request per
line, ``{"op": "power" | "guid" | "off" | "on"}``, each answered
``{"ok": true, "data": ...}`` or ``{"ok": false, "outcome", "message"}``.
End of input logs out and exits.
"""

from __future__ import annotations

import base64
import json
import sys
import uuid
from typing import Any

_CC = {0xC0: "node busy", 0xC1: "invalid command", 0xC3: "timeout", 0xCC: "invalid data field",
       0xD4: "insufficient privilege", 0xD5: "command not supported in present state"}


class _Fail(Exception):
    def __init__(self, outcome: str, message: str) -> None:
        super().__init__(message)
        self.outcome = outcome
        self.message = message


def _raw(cmd: Any, netfn: int, command: int, data: tuple[int, ...] = ()) -> bytes:
    rsp = cmd.raw_command(netfn=netfn, command=command, data=data)
    if "error" in rsp:
        err = str(rsp["error"])
        raise _Fail("unreachable" if "timeout" in err.lower() or "session" in err.lower() else "failed", f"BMC error: {err}")
    code = int(rsp.get("code", 0))
    if code:
        raise _Fail("failed", f"BMC completion code 0x{code:02X} ({_CC.get(code, 'error')})")
    return bytes(rsp.get("data", b""))


def _handle(cmd: Any, op: str) -> Any:
    if op == "power":
        data = _raw(cmd, 0x00, 0x01)  # Get Chassis Status
        if not data:
            raise _Fail("failed", "chassis status without data")
        return {"on": bool(data[0] & 1), "detail": f"chassis status byte0=0x{data[0]:02x}"}
    if op == "guid":
        data = _raw(cmd, 0x06, 0x37)  # Get System GUID
        if len(data) != 16:
            raise _Fail("failed", f"system GUID of {len(data)} bytes")
        # SMBIOS byte order (first three fields little-endian), like dmidecode.
        return str(uuid.UUID(bytes_le=data))
    if op == "off":
        _raw(cmd, 0x00, 0x02, (0x00,))  # Chassis Control: power down (hard)
        return "chassis control power down acknowledged"
    if op == "on":
        _raw(cmd, 0x00, 0x02, (0x01,))  # Chassis Control: power up
        return "chassis control power up acknowledged"
    raise _Fail("failed", f"unknown op {op!r}")


def _reply(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def main() -> int:
    from pyghmi import exceptions as pexc
    from pyghmi.ipmi import command

    login = json.loads(sys.stdin.readline())
    try:
        # bytes, not str: with str pyghmi 1.6.19 keeps a stale session entry after logout.
        cmd = command.Command(bmc=login["host"], userid=login["user"].encode(), password=base64.b64decode(login["password_b64"]),
                              port=int(login["port"]), keepalive=False)
    except pexc.IpmiException as e:
        text = str(e.args[0]) if e.args and e.args[0] else ""
        refused = any(w in text.lower() for w in ("password", "user", "privilege"))
        _reply({"ok": False, "outcome": "failed" if refused else "unreachable",
                "message": f"login refused: {text}" if refused else f"no IPMI session with {login['host']}:{login['port']}" + (f": {text}" if text else "")})
        return 0
    except Exception as e:  # noqa: BLE001 - reported to the parent as a failed device
        _reply({"ok": False, "outcome": "failed", "message": f"IPMI client error: {type(e).__name__}: {e}"})
        return 0
    _reply({"ok": True})
    try:
        for line in sys.stdin:
            if not line.strip():
                continue
            try:
                _reply({"ok": True, "data": _handle(cmd, json.loads(line)["op"])})
            except _Fail as f:
                _reply({"ok": False, "outcome": f.outcome, "message": f.message})
            except Exception as e:  # noqa: BLE001 - a client bug reads as a failed device, never as success
                _reply({"ok": False, "outcome": "failed", "message": f"IPMI client error: {type(e).__name__}: {e}"})
    finally:
        try:
            cmd.ipmi_session.logout()
        except Exception:  # noqa: BLE001 - best effort; the BMC expires the session anyway
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
