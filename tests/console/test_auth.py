"""Password hash, password file, sessions and the login limiter, on an injected clock."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from clever_cluster.daemon.console import auth


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_hash_round_trip_and_salt() -> None:
    line = auth.make_hash("a long enough secret", log2_n=10)
    h = auth.PasswordHash.parse(line)
    assert h.matches("a long enough secret") and not h.matches("a long enough secreT")
    assert auth.make_hash("a long enough secret", log2_n=10) != line  # a fresh salt each time
    assert "a long enough secret" not in line
    assert line.startswith("scrypt$10$8$1$")
    assert auth.PasswordHash.parse(auth.make_hash("x" * 12)).log2_n == auth.LOG2_N  # the default cost


@pytest.mark.parametrize("line,says", [
    ("plain-text-password", "not a console password hash"),
    ("scrypt$15$8$1$!!!$AAAA", "garbled"),
    ("scrypt$30$8$1$c2FsdHNhbHQ=$" + "A" * 44, "out of range"),
    ("scrypt$15$8$1$c2FsdHNhbHQ=$QUFBQQ==", "out of range"),  # digest too short
])
def test_bad_hash_lines_are_refused_with_a_reason(line: str, says: str) -> None:
    with pytest.raises(auth.PasswordFileError, match=says):
        auth.PasswordHash.parse(line)


def test_password_file_checks(tmp_path: Path) -> None:
    p = tmp_path / "pw"
    with pytest.raises(auth.PasswordFileError, match="cannot read"):
        auth.read_password_file(p)
    p.write_text("# made by clevervm console-password\n" + auth.make_hash("twelve chars!", log2_n=10) + "\n")
    p.chmod(0o644)
    with pytest.raises(auth.PasswordFileError, match="readable by others"):
        auth.read_password_file(p)
    p.chmod(0o600)
    assert auth.read_password_file(p).matches("twelve chars!")
    p.write_text(auth.make_hash("twelve chars!", log2_n=10) + "\n" + auth.make_hash("other one!!!", log2_n=10) + "\n")
    with pytest.raises(auth.PasswordFileError, match="exactly one"):
        auth.read_password_file(p)


def test_password_rules() -> None:
    assert auth.password_problem("short") is not None
    assert auth.password_problem(" padded password ") is not None
    assert auth.password_problem("a fine passphrase") is None


def test_clevervm_console_password_writes_a_private_hash(tmp_path: Path) -> None:
    target = tmp_path / "console.password"
    r = subprocess.run([sys.executable, "-m", "clever_cluster.daemon.cli", "console-password", str(target)],
                       input="a fine passphrase\n", capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stderr
    assert target.stat().st_mode & 0o777 == 0o600
    assert auth.read_password_file(target).matches("a fine passphrase")
    before = target.read_text()
    r = subprocess.run([sys.executable, "-m", "clever_cluster.daemon.cli", "console-password", str(target)],
                       input="short\n", capture_output=True, text=True, check=False)
    assert r.returncode == 1 and "too short" in r.stderr and "Traceback" not in r.stderr
    assert target.read_text() == before  # a refused password loses nothing


def test_clevervm_console_password_uses_the_configured_file(lab_configs: tuple[Path, Path], tmp_path: Path) -> None:
    cfg = lab_configs[0]
    r = subprocess.run([sys.executable, "-m", "clever_cluster.daemon.cli", "--config", str(cfg), "console-password"],
                       input="a fine passphrase\n", capture_output=True, text=True, check=False)
    assert r.returncode == 2 and "console.password_file is not set" in r.stderr
    target = tmp_path / "from-config.password"
    cfg.write_text(cfg.read_text() + f'\n[console]\npassword_file = "{target}"\n')
    r = subprocess.run([sys.executable, "-m", "clever_cluster.daemon.cli", "--config", str(cfg), "console-password"],
                       input="a fine passphrase\n", capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stderr
    assert auth.read_password_file(target).matches("a fine passphrase")


def test_sessions_expire_when_idle_and_after_their_lifetime() -> None:
    clock = Clock()
    s = auth.Sessions(clock)
    a = s.create("10.0.0.1")
    assert s.get(a.token) is a and s.get("forged") is None and s.get(None) is None
    clock.t += auth.Sessions.IDLE - 1
    assert s.get(a.token) is a  # used: the idle timer restarts
    clock.t += auth.Sessions.IDLE - 1
    assert s.get(a.token) is a
    clock.t += auth.Sessions.IDLE + 1
    assert s.get(a.token) is None
    b = s.create("10.0.0.1")
    for _ in range(int(auth.Sessions.ABSOLUTE // (auth.Sessions.IDLE / 2)) + 1):
        clock.t += auth.Sessions.IDLE / 2
        s.get(b.token)
    assert s.get(b.token) is None  # kept busy, but past its lifetime


def test_sessions_are_bounded_and_tokens_distinct() -> None:
    s = auth.Sessions(Clock())
    made = [s.create("a") for _ in range(auth.Sessions.MAX + 5)]
    assert len(s) == auth.Sessions.MAX
    assert s.get(made[0].token) is None and s.get(made[-1].token) is not None  # the oldest made room
    assert len({m.token for m in made} | {m.csrf for m in made}) == 2 * len(made)


def test_csrf_check() -> None:
    sess = auth.Sessions(Clock()).create("a")
    assert auth.csrf_ok(sess, sess.csrf)
    assert not auth.csrf_ok(sess, None) and not auth.csrf_ok(sess, "") and not auth.csrf_ok(sess, sess.token)


def test_limiter_per_address_and_window() -> None:
    clock = Clock()
    lim = auth.LoginLimiter(clock, per_address=3, global_limit=100, window=60)
    for _ in range(3):
        assert lim.retry_after("a") == 0
        lim.failed("a")
        clock.t += 1
    assert lim.retry_after("a") == pytest.approx(57)
    assert lim.retry_after("b") == 0  # another address is not punished
    clock.t += 57
    assert lim.retry_after("a") == 0  # the oldest failure left the window
    lim.failed("a")
    assert lim.retry_after("a") > 0
    lim.succeeded("a")
    assert lim.retry_after("a") == 0


def test_limiter_global_limit_stops_a_spread_out_guesser() -> None:
    clock = Clock()
    lim = auth.LoginLimiter(clock, per_address=5, global_limit=10, window=60)
    for i in range(10):
        lim.failed(f"10.0.0.{i}")
    assert lim.retry_after("10.0.1.1") == pytest.approx(60)
    clock.t += 61
    assert lim.retry_after("10.0.1.1") == 0
