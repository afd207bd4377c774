"""The Redfish agent against sushy-tools (fake driver and libvirt test
driver backends), and an in-process fake for what sushy cannot produce."""

from __future__ import annotations

import http.server
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from clever_cluster.fencing.agent import DeviceConfigError
from clever_cluster.fencing.redfish import RedfishAgent, RedfishParams
from clever_cluster.fencing.types import Deadline, Outcome, PowerState, Secret

from .emulators import PEER_UUID, htpasswd, sushy

PEER = {"uuid": PEER_UUID, "name": "node2", "power_state": "On", "nics": []}
OTHER = {"uuid": "22222222-3333-4444-8555-666666666666", "name": "node3", "power_state": "On", "nics": []}
TEST_DOMAIN_UUID = "6695eb01-f6a4-8304-79aa-97f2502e193f"  # libvirt's test:///default domain "test"


def agent(url: str, user: str = "fence", password: str = "pw", timeout: float = 20, **kw: Any) -> RedfishAgent:
    return RedfishAgent("bmc-rf", RedfishParams(url, user, Secret(password.encode()), **kw), timeout=timeout, poll_interval=0.3)


@pytest.mark.slow
async def test_fake_driver_power_change_after_a_random_delay_is_polled_to_off(tmp_path: Path) -> None:
    with sushy(tmp_path, [PEER]) as s:
        a = agent(s.url, timeout=25)
        assert await a.machine_id(Deadline.after(5)) == PEER_UUID
        r = await a.off(Deadline.after(25))
        assert r.confirmed, r.evidence
        assert "accepted (HTTP 204)" in r.evidence[0]
        assert (await a.status(Deadline.after(5))).state is PowerState.OFF


async def test_libvirt_backend_off_is_confirmed(tmp_path: Path) -> None:
    with sushy(tmp_path, libvirt_uri="test:///default") as s:
        a = agent(s.url)
        h = await a.monitor(Deadline.after(5))
        assert h.ok and h.machine_id == TEST_DOMAIN_UUID and h.power is PowerState.ON
        r = await a.off(Deadline.after(10))
        assert r.confirmed and sum("read OFF" in e for e in r.evidence) == 2


async def test_power_off_disabled_fails_at_once_with_the_services_message(tmp_path: Path) -> None:
    with sushy(tmp_path, [PEER], disable_power_off=True) as s:
        t0 = time.monotonic()
        r = await agent(s.url).off(Deadline.after(20))
        assert r.outcome is Outcome.FAILED and "HTTP 400" in r.message and "DISABLE_POWER_OFF" in r.message
        assert time.monotonic() - t0 < 5


async def test_wrong_credentials(tmp_path: Path) -> None:
    users = htpasswd(tmp_path / "htpasswd", "fence", "right-password")
    with sushy(tmp_path / "emu", [PEER], auth_file=users) as s:
        bad = agent(s.url, password="wrong")
        r = await bad.off(Deadline.after(10))
        assert r.outcome is Outcome.FAILED and "HTTP 401" in r.message
        assert not (await bad.monitor(Deadline.after(5))).ok
        good = agent(s.url, password="right-password")
        assert (await good.monitor(Deadline.after(5))).ok


async def test_tls_with_a_test_ca(tmp_path: Path) -> None:
    import trustme

    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    cert_pem, key_pem, ca_pem = tmp_path / "cert.pem", tmp_path / "key.pem", tmp_path / "ca.pem"
    cert.cert_chain_pems[0].write_to_path(str(cert_pem))
    cert.private_key_pem.write_to_path(str(key_pem))
    ca.cert_pem.write_to_path(str(ca_pem))
    with sushy(tmp_path / "emu", [PEER], tls=(cert_pem, key_pem)) as s:
        assert s.url.startswith("https://")
        trusted = agent(s.url, ca_file=ca_pem)
        assert (await trusted.monitor(Deadline.after(5))).ok
        untrusted = agent(s.url)  # system CAs only: verification is on by default
        h = await untrusted.monitor(Deadline.after(5))
        assert not h.ok and "TLS verification failed" in h.message
        r = await untrusted.off(Deadline.after(5))
        assert r.outcome is Outcome.FAILED
        insecure = agent(s.url, verify_tls=False)
        assert (await insecure.monitor(Deadline.after(5))).ok


async def test_two_systems_need_an_explicit_system(tmp_path: Path) -> None:
    with sushy(tmp_path, [PEER, OTHER]) as s:
        a = agent(s.url)
        with pytest.raises(DeviceConfigError, match="has 2 systems"):
            await a.machine_id(Deadline.after(5))
        r = await a.off(Deadline.after(5))
        assert r.outcome is Outcome.FAILED and "set `system`" in r.message
        assert not (await a.monitor(Deadline.after(5))).ok
        chosen = agent(s.url, system=f"/redfish/v1/Systems/{PEER_UUID}")
        assert await chosen.machine_id(Deadline.after(5)) == PEER_UUID


# ---------------------------------------------------------------- in-process fake


class FakeRedfish(http.server.ThreadingHTTPServer):
    """A tiny Redfish service whose system state the test controls."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.system: dict[str, Any] = {"UUID": PEER_UUID, "PowerState": "On",
                                       "Actions": {"#ComputerSystem.Reset": {"target": "/redfish/v1/Systems/1/Actions/ComputerSystem.Reset",
                                                                             "ResetType@Redfish.AllowableValues": ["On", "ForceOff"]}}}
        self.on_reset: dict[str, Any] = {"PowerState": "PoweringOff"}
        self.post_status = 204
        self.get_status = 200
        self.get_status_after_reset: int | None = None
        self.posts: list[dict[str, Any]] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(http.server.BaseHTTPRequestHandler):
    server: FakeRedfish

    def log_message(self, *args: Any) -> None:
        pass

    def _json(self, code: int, body: Any) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        if self.path == "/redfish/v1":
            self._json(200, {"Systems": {"@odata.id": "/redfish/v1/Systems"}})
        elif self.path == "/redfish/v1/Systems":
            self._json(200, {"Members": [{"@odata.id": "/redfish/v1/Systems/1"}]})
        elif self.server.get_status != 200:
            self._json(self.server.get_status, {"error": {"message": "Service Unavailable", "@Message.ExtendedInfo": [{"Message": "BMC is busy"}]}})
        else:
            self._json(200, self.server.system)

    def do_POST(self) -> None:
        n = int(self.headers.get("Content-Length", 0))
        self.server.posts.append(json.loads(self.rfile.read(n)))
        if self.server.post_status >= 300:
            self._json(self.server.post_status, {"error": {"@Message.ExtendedInfo": [{"Message": "The service is temporarily unavailable"}]}})
            return
        self.server.system.update(self.server.on_reset)
        if self.server.get_status_after_reset is not None:
            self.server.get_status = self.server.get_status_after_reset
        self.send_response(self.server.post_status)
        self.send_header("Content-Length", "0")
        self.end_headers()


@pytest.fixture
def fake_rf() -> Iterator[FakeRedfish]:
    srv = FakeRedfish()
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    try:
        yield srv
    finally:
        srv.shutdown()
        srv.server_close()


async def test_stuck_in_powering_off_is_never_confirmed(fake_rf: FakeRedfish) -> None:
    r = await agent(fake_rf.url).off(Deadline.after(2))
    assert r.outcome is Outcome.TIMED_OUT and "PoweringOff" in " ".join(r.evidence)
    assert fake_rf.posts == [{"ResetType": "ForceOff"}]


async def test_missing_power_state_is_never_confirmed(fake_rf: FakeRedfish) -> None:
    fake_rf.on_reset = {}
    del fake_rf.system["PowerState"]
    r = await agent(fake_rf.url).off(Deadline.after(2))
    assert r.outcome is Outcome.TIMED_OUT and "no PowerState" in " ".join(r.evidence)


async def test_503_on_reset_fails_at_once_with_the_message(fake_rf: FakeRedfish) -> None:
    fake_rf.post_status = 503
    r = await agent(fake_rf.url).off(Deadline.after(10))
    assert r.outcome is Outcome.FAILED and "HTTP 503" in r.message and "temporarily unavailable" in r.message


async def test_503_while_polling_is_not_off(fake_rf: FakeRedfish) -> None:
    fake_rf.on_reset = {"PowerState": "Off"}
    fake_rf.get_status_after_reset = 503  # accept the reset, then answer every status read with 503
    r = await agent(fake_rf.url).off(Deadline.after(2))
    assert not r.confirmed and "HTTP 503" in " ".join(r.evidence)


async def test_accepted_then_off_is_confirmed_by_the_fake(fake_rf: FakeRedfish) -> None:
    fake_rf.on_reset = {"PowerState": "Off"}
    r = await agent(fake_rf.url).off(Deadline.after(5))
    assert r.confirmed
