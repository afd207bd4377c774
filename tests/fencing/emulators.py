"""Emulator processes for the fencing tests, each started on an ephemeral
loopback port and always stopped by its PID (never by name)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from clever_cluster.sim.harness import wait_for

PEER_UUID = "4c4c4544-0042-3510-8053-b4c04f4e4d32"
OWN_UUID = "11111111-2222-4333-8444-555555555555"
OTHER_UUID = "99999999-8888-4777-8666-555555555555"
BMC_USER = "fence"
BMC_PASSWORD = "s3cret-Pa55"


class BmcProcess:
    """``python -m clever_cluster.sim.bmc`` in its own process."""

    def __init__(self, workdir: Path, mode: str = "immediate", machine_uuid: str = PEER_UUID, power: str = "on") -> None:
        self.dir = workdir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.events_path = self.dir / "events.jsonl"
        pw = self.dir / "bmc-password"
        pw.write_text(BMC_PASSWORD)
        self.out = self.dir / "bmc.out"
        with open(self.out, "wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "clever_cluster.sim.bmc", "--port", "0", "--user", BMC_USER, "--password-file", str(pw),
                 "--uuid", machine_uuid, "--mode", mode, "--power", power, "--events", str(self.events_path)],
                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        self.port = int(wait_for(self._port, 20, "the BMC emulator to print its port"))

    def _port(self) -> str | None:
        if self.proc.poll() is not None:
            raise AssertionError(f"BMC emulator exited: {self.out.read_text()}")
        for line in self.out.read_text().splitlines():
            if line.startswith("PORT "):
                return line.split()[1]
        return None

    def events(self) -> list[dict[str, Any]]:
        try:
            return [json.loads(x) for x in self.events_path.read_text().splitlines() if x.strip()]
        except FileNotFoundError:
            return []

    def names(self) -> list[str]:
        return [e["event"] for e in self.events()]

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)


@contextlib.contextmanager
def bmc(workdir: Path, **kw: Any) -> Iterator[BmcProcess]:
    p = BmcProcess(workdir, **kw)
    try:
        yield p
    finally:
        p.stop()


def free_udp_port() -> int:
    """A UDP port with nothing listening on it (for the "closed port" case)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def free_tcp_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def new_uuid() -> str:
    return str(uuid.uuid4())


def monotonic() -> float:
    return time.monotonic()


class SushyProcess:
    """``sushy-emulator`` (sushy-tools) with its fake driver or a libvirt URI.

    Every instance gets its own state directory: the fake driver keeps power
    state in SQLite there, and a shared one would leak state between tests.
    """

    def __init__(self, workdir: Path, systems: list[dict[str, Any]] | None = None, *, libvirt_uri: str | None = None,
                 tls: tuple[Path, Path] | None = None, auth_file: Path | None = None, disable_power_off: bool = False) -> None:
        self.dir = workdir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = free_tcp_port()
        conf = [
            "SUSHY_EMULATOR_LISTEN_IP = '127.0.0.1'",
            f"SUSHY_EMULATOR_LISTEN_PORT = {self.port}",
            f"SUSHY_EMULATOR_STATE_DIR = {str(self.dir / 'state')!r}",
        ]
        if libvirt_uri is None:
            conf += ["SUSHY_EMULATOR_FAKE_DRIVER = True", f"SUSHY_EMULATOR_FAKE_SYSTEMS = {systems!r}"]
        else:
            conf += [f"SUSHY_EMULATOR_LIBVIRT_URI = {libvirt_uri!r}"]
        if tls is not None:
            conf += [f"SUSHY_EMULATOR_SSL_CERT = {str(tls[0])!r}", f"SUSHY_EMULATOR_SSL_KEY = {str(tls[1])!r}"]
        if auth_file is not None:
            conf += [f"SUSHY_EMULATOR_AUTH_FILE = {str(auth_file)!r}"]
        if disable_power_off:
            conf += ["SUSHY_EMULATOR_DISABLE_POWER_OFF = True"]
        cfg = self.dir / "emulator.conf"
        cfg.write_text("\n".join(conf) + "\n")
        self.scheme = "https" if tls else "http"
        self.url = f"{self.scheme}://127.0.0.1:{self.port}"
        self.log = self.dir / "emulator.log"
        exe = Path(sys.executable).with_name("sushy-emulator")
        env = {**os.environ, "TMPDIR": str(self.dir)}
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen([str(exe), "--config", str(cfg)], stdout=out, stderr=subprocess.STDOUT,
                                         start_new_session=True, env=env)
        wait_for(self._listening, 30, "sushy-emulator to listen")

    def _listening(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"sushy-emulator exited: {self.log.read_text()}")
        with socket.socket() as s:
            s.settimeout(0.2)
            return s.connect_ex(("127.0.0.1", self.port)) == 0

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)


@contextlib.contextmanager
def sushy(workdir: Path, *args: Any, **kw: Any) -> Iterator[SushyProcess]:
    p = SushyProcess(workdir, *args, **kw)
    try:
        yield p
    finally:
        p.stop()


def htpasswd(path: Path, user: str, password: str) -> Path:
    """An Apache-style user file with a bcrypt hash (the only kind sushy-tools reads)."""
    import bcrypt

    path.write_text(f"{user}:{bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=4)).decode()}\n")
    return path
