"""Redfish fence agent: plain HTTPS (httpx), Basic auth on every request.

- The system is the configured ``system`` path, or the only member of the
  Systems collection; a service with several systems and no ``system``
  configured is a configuration error (never "take the last one").
- ``off``: check ``ForceOff`` is allowed, ``POST`` ``ComputerSystem.Reset``
  with ``{"ResetType": "ForceOff"}``; any 4xx/5xx fails at once with the
  service's own message; a 2xx is only "accepted". Then poll the system
  until ``PowerState`` is exactly ``"Off"`` twice in a row. ``PoweringOff``,
  ``null`` or a missing ``PowerState`` is not off.
- TLS certificates are verified by default (system CAs or ``ca_file``).
- Every request goes to the configured service's origin: a link the
  service gives to another host (a member, a reset target) is refused, so
  the credentials, the power action and the readings stay with that BMC.
  Only a 2xx answer is read as a resource (a redirect's body is not).
- No session is created, so none can leak (BMCs have few session slots).
"""

from __future__ import annotations

import dataclasses
import ssl
import urllib.parse
from pathlib import Path
from typing import Any

import httpx

from .agent import DeviceConfigError, DeviceError, FenceAgent, canonical_uuid, verify_off, verify_on
from .types import Deadline, DeviceHealth, FenceResult, Outcome, PowerOnResult, PowerReading, PowerState, Secret, now_wall


@dataclasses.dataclass(frozen=True)
class RedfishParams:
    url: str  # service root, e.g. https://10.0.9.2
    username: str
    password: Secret
    system: str | None = None  # e.g. /redfish/v1/Systems/1
    verify_tls: bool = True
    ca_file: Path | None = None


def _service_message(resp: httpx.Response) -> str:
    """The Redfish error text of a failed request (ExtendedInfo first)."""
    try:
        body = resp.json()
    except ValueError:
        text = resp.text.strip().splitlines()
        return text[0][:200] if text else resp.reason_phrase
    err = body.get("error", {}) if isinstance(body, dict) else {}
    infos = err.get("@Message.ExtendedInfo") or []
    msgs = [str(i.get("Message")) for i in infos if isinstance(i, dict) and i.get("Message")]
    if msgs:
        return "; ".join(msgs)[:300]
    return str(err.get("message") or resp.reason_phrase)[:300]


def _origin(parts: urllib.parse.SplitResult) -> tuple[str, str | None, int | None]:
    scheme = parts.scheme.lower()
    try:
        port = parts.port
    except ValueError:
        port = -1  # malformed: matches nothing
    return scheme, parts.hostname, port if port is not None else {"http": 80, "https": 443}.get(scheme)


class RedfishAgent(FenceAgent):
    kind = "redfish"
    shares_peer_power = True

    def __init__(self, name: str, params: RedfishParams, timeout: float = 60.0, poll_interval: float = 1.0) -> None:
        super().__init__(name, timeout, poll_interval)
        self.params = params
        self._base = params.url.rstrip("/")
        self._verify: ssl.SSLContext | bool
        if not params.url.startswith("https://") or not params.verify_tls:
            self._verify = False
        else:
            self._verify = ssl.create_default_context(cafile=str(params.ca_file) if params.ca_file else None)

    def describe(self) -> str:
        parts = urllib.parse.urlsplit(self._base)
        shown = parts._replace(netloc=parts.netloc.rpartition("@")[2]).geturl()  # never credentials in a URL
        return f"redfish {shown}{self.params.system or ''} user {self.params.username}"

    def _client(self) -> httpx.AsyncClient:
        auth = httpx.BasicAuth(self.params.username.encode(), self.params.password.reveal())
        return httpx.AsyncClient(base_url=self._base, auth=auth, verify=self._verify, follow_redirects=False,
                                 headers={"Accept": "application/json", "OData-Version": "4.0"})

    def _local(self, uri: str) -> str:
        """``uri`` (a link the service gave, or ``system``) as a path on this service.

        A link to any other origin is refused: the credentials and the power
        action go to the configured service only, and a power reading comes
        from it only.
        """
        parts = urllib.parse.urlsplit(uri)
        if (parts.scheme or parts.netloc) and _origin(parts) != _origin(urllib.parse.urlsplit(self._base)):
            raise DeviceError(Outcome.FAILED, f"the service links to {uri!r}, on another host than {self._base}: refused")
        if not parts.path.startswith("/"):
            raise DeviceError(Outcome.FAILED, f"the service gave {uri!r}, not a path on {self._base}")
        return parts.path + (f"?{parts.query}" if parts.query else "")

    async def _request(self, c: httpx.AsyncClient, method: str, path: str, deadline: Deadline, json: Any = None) -> httpx.Response:
        path = self._local(path)
        left = deadline.remaining()
        if left <= 0:
            raise DeviceError(Outcome.TIMED_OUT, f"{method} {path}: deadline passed")
        try:
            return await c.request(method, path, json=json, timeout=left)
        except httpx.TimeoutException:
            raise DeviceError(Outcome.TIMED_OUT, f"{method} {path}: no answer before the deadline") from None
        except httpx.ConnectError as e:
            text = str(e)
            if "CERTIFICATE" in text.upper() or "SSL" in text.upper():
                raise DeviceError(Outcome.FAILED, f"TLS verification failed for {self._base}: {text}") from None
            raise DeviceError(Outcome.UNREACHABLE, f"cannot connect to {self._base}: {text}") from None
        except httpx.HTTPError as e:
            raise DeviceError(Outcome.UNREACHABLE, f"{method} {path}: {type(e).__name__}: {e}") from None

    async def _get_json(self, c: httpx.AsyncClient, path: str, deadline: Deadline) -> dict[str, Any]:
        resp = await self._request(c, "GET", path, deadline)
        if not 200 <= resp.status_code < 300:
            # A redirect's body (or any other non-2xx body) is not the resource asked for.
            raise DeviceError(Outcome.FAILED, f"GET {path}: HTTP {resp.status_code}: {_service_message(resp)}")
        try:
            body = resp.json()
        except ValueError:
            raise DeviceError(Outcome.FAILED, f"GET {path}: not JSON") from None
        if not isinstance(body, dict):
            raise DeviceError(Outcome.FAILED, f"GET {path}: not a JSON object")
        return body

    async def _system_path(self, c: httpx.AsyncClient, deadline: Deadline) -> str:
        if self.params.system:
            return self.params.system
        root = await self._get_json(c, "/redfish/v1", deadline)
        coll = (root.get("Systems") or {}).get("@odata.id")
        if not isinstance(coll, str):
            raise DeviceError(Outcome.FAILED, "service root has no Systems collection")
        members = (await self._get_json(c, coll, deadline)).get("Members") or []
        paths = [str(m["@odata.id"]) for m in members if isinstance(m, dict) and isinstance(m.get("@odata.id"), str)]
        if len(paths) != 1:
            raise DeviceConfigError(f"{self.name}: the service at {self._base} has {len(paths)} systems ({', '.join(paths) or 'none'}); "
                                    "set `system` to the one that powers the peer")
        return str(paths[0])

    @staticmethod
    def _reading(system: dict[str, Any]) -> PowerReading:
        state = system.get("PowerState")
        # Exactly "Off" is off. PoweringOff, Paused, null, missing: not off.
        if state == "Off":
            return PowerReading(PowerState.OFF, "PowerState='Off'")
        if state == "On":
            return PowerReading(PowerState.ON, "PowerState='On'")
        return PowerReading(PowerState.UNKNOWN, f"PowerState={state!r}" if "PowerState" in system else "no PowerState in the system resource")

    async def _read(self, c: httpx.AsyncClient, path: str, deadline: Deadline) -> PowerReading:
        try:
            return self._reading(await self._get_json(c, path, deadline))
        except DeviceError as e:
            return PowerReading(PowerState.UNKNOWN, e.message, e.outcome)

    async def status(self, deadline: Deadline) -> PowerReading:
        async with self._client() as c:
            try:
                path = await self._system_path(c, deadline)
            except DeviceError as e:
                return PowerReading(PowerState.UNKNOWN, e.message, e.outcome)
            return await self._read(c, path, deadline)

    async def machine_id(self, deadline: Deadline) -> str:
        async with self._client() as c:
            system = await self._get_json(c, await self._system_path(c, deadline), deadline)
        raw = system.get("UUID")
        if not isinstance(raw, str):
            raise DeviceError(Outcome.FAILED, "the system resource has no UUID")
        try:
            return canonical_uuid(raw)
        except ValueError:
            raise DeviceError(Outcome.FAILED, f"the system reports a malformed UUID {raw!r}") from None

    async def monitor(self, deadline: Deadline) -> DeviceHealth:
        try:
            async with self._client() as c:
                path = await self._system_path(c, deadline)
                system = await self._get_json(c, path, deadline)
        except DeviceError as e:
            return self.health(False, e.message)
        except DeviceConfigError as e:
            return self.health(False, str(e))
        reading = self._reading(system)
        raw = system.get("UUID")
        mid = None
        if isinstance(raw, str):
            try:
                mid = canonical_uuid(raw)
            except ValueError:
                mid = None
        return self.health(True, f"{path} answers, {reading.detail}", reading.state, mid)

    async def _reset(self, c: httpx.AsyncClient, path: str, system: dict[str, Any], reset_type: str, deadline: Deadline) -> str:
        action = (system.get("Actions") or {}).get("#ComputerSystem.Reset") or {}
        target = action.get("target")
        if not isinstance(target, str):
            raise DeviceError(Outcome.FAILED, f"{path} offers no ComputerSystem.Reset action")
        allowed = action.get("ResetType@Redfish.AllowableValues")
        if isinstance(allowed, list) and reset_type not in allowed:
            raise DeviceError(Outcome.FAILED, f"{path} does not allow ResetType {reset_type} (allowed: {', '.join(map(str, allowed))})")
        resp = await self._request(c, "POST", target, deadline, json={"ResetType": reset_type})
        if resp.status_code >= 300:
            raise DeviceError(Outcome.FAILED, f"POST {target} {reset_type}: HTTP {resp.status_code}: {_service_message(resp)}")
        return f"POST {target} {reset_type} accepted (HTTP {resp.status_code})"

    async def off(self, deadline: Deadline) -> FenceResult:
        started = now_wall()
        evidence: list[str] = []
        async with self.lock, self._client() as c:
            try:
                path = await self._system_path(c, deadline)
                system = await self._get_json(c, path, deadline)
                before = self._reading(system)
                if before.state is PowerState.OFF:
                    evidence.append(f"already off before the command: {before.detail}")
                else:
                    evidence.append(await self._reset(c, path, system, "ForceOff", deadline))
                outcome = await verify_off(lambda d: self._read(c, path, d), deadline, self.poll_interval, evidence)
            except DeviceError as e:
                evidence.append(e.message)
                outcome = e.outcome
            except DeviceConfigError as e:
                evidence.append(str(e))
                outcome = Outcome.FAILED
        return self.result("off", outcome, evidence, started)

    async def on(self, deadline: Deadline) -> PowerOnResult:
        started = now_wall()
        evidence: list[str] = []
        async with self.lock, self._client() as c:
            try:
                path = await self._system_path(c, deadline)
                system = await self._get_json(c, path, deadline)
                evidence.append(await self._reset(c, path, system, "On", deadline))
                ok = await verify_on(lambda d: self._read(c, path, d), deadline, self.poll_interval, evidence)
            except (DeviceError, DeviceConfigError) as e:
                evidence.append(str(e))
                ok = False
        return self.on_result(ok, evidence, started)
