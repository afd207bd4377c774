"""Console authentication: the password hash, sessions with CSRF tokens, and the login rate limit.

Invariants:
- The password itself is never stored: the password file holds one line,
  ``scrypt$<log2 N>$<r>$<p>$<salt>$<hash>`` (base64), made by ``clevervm
  console-password``; a guess is checked by recomputing the hash with the
  file's own parameters and comparing in constant time.
- A session is a 256-bit random token held only in this process's memory
  (a console restart ends every session); it expires after ``IDLE`` seconds
  without use and ``ABSOLUTE`` seconds after the login, whichever comes first.
  Each session has its own CSRF token, required on every state-changing request.
- The login limiter is asked *before* any hash is computed, so a flood of
  guesses costs neither CPU nor a chance: per remote address at most
  ``per_address`` failures per ``window``, and at most ``global_limit``
  failures per ``window`` from all addresses together (a spread-out guesser).
- Clocks are injected (monotonic seconds) so the rules are tested without sleeping.
"""

from __future__ import annotations

import base64
import binascii
import collections
import dataclasses
import hashlib
import hmac
import os
import secrets
import time
from collections.abc import Callable
from pathlib import Path

SCHEME = "scrypt"
LOG2_N = 15          # N = 32768, r = 8: 32 MiB and some tens of ms per guess
R, P = 8, 1
SALT_BYTES = 16
HASH_BYTES = 32
MAX_LOG2_N = 20      # refuse files that would make one check cost a GiB
MIN_PASSWORD = 12


class PasswordFileError(Exception):
    """The password file is missing, unreadable or not one of ours."""


def _scrypt(password: str, salt: bytes, log2_n: int, r: int, p: int) -> bytes:
    n = 1 << log2_n
    return hashlib.scrypt(password.encode(), salt=salt, n=n, r=r, p=p, dklen=HASH_BYTES, maxmem=256 * r * n + (1 << 20))


def make_hash(password: str, *, log2_n: int = LOG2_N, salt: bytes | None = None) -> str:
    """The password file's line for ``password`` (a fresh random salt unless given)."""
    salt = os.urandom(SALT_BYTES) if salt is None else salt
    digest = _scrypt(password, salt, log2_n, R, P)
    b64 = base64.b64encode
    return f"{SCHEME}${log2_n}${R}${P}${b64(salt).decode()}${b64(digest).decode()}"


@dataclasses.dataclass(frozen=True)
class PasswordHash:
    log2_n: int
    r: int
    p: int
    salt: bytes
    digest: bytes

    @classmethod
    def parse(cls, line: str) -> PasswordHash:
        parts = line.strip().split("$")
        if len(parts) != 6 or parts[0] != SCHEME:
            raise PasswordFileError("not a console password hash (make one with: clevervm console-password FILE)")
        try:
            log2_n, r, p = int(parts[1]), int(parts[2]), int(parts[3])
            salt = base64.b64decode(parts[4], validate=True)
            digest = base64.b64decode(parts[5], validate=True)
        except (ValueError, binascii.Error):
            raise PasswordFileError("garbled console password hash (make a new one with: clevervm console-password FILE)") from None
        if not (10 <= log2_n <= MAX_LOG2_N and 1 <= r <= 32 and 1 <= p <= 16 and len(salt) >= 8 and len(digest) == HASH_BYTES):
            raise PasswordFileError("console password hash has parameters out of range (make a new one with: clevervm console-password FILE)")
        return cls(log2_n, r, p, salt, digest)

    def matches(self, password: str) -> bool:
        return hmac.compare_digest(_scrypt(password, self.salt, self.log2_n, self.r, self.p), self.digest)


def read_password_file(path: Path) -> PasswordHash:
    """Parse the file; refuse one that others can read (the hash allows offline guessing)."""
    try:
        st = path.stat()
        text = path.read_text()
    except OSError as e:
        raise PasswordFileError(f"cannot read {path}: {e.strerror or e}") from None
    if st.st_mode & 0o007:
        raise PasswordFileError(f"{path} is readable by others (mode {st.st_mode & 0o777:04o}); run: chmod 600 {path}")
    lines = [ln for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    if len(lines) != 1:
        raise PasswordFileError(f"{path}: expected exactly one hash line, found {len(lines)}")
    return PasswordHash.parse(lines[0])


def password_problem(password: str) -> str | None:
    """Why a new password is refused, or None."""
    if len(password) < MIN_PASSWORD:
        return f"too short: use at least {MIN_PASSWORD} characters"
    if password != password.strip():
        return "leading or trailing white space is not allowed (it is easily lost when typing)"
    return None


# --------------------------------------------------------------------------- sessions


@dataclasses.dataclass
class Session:
    token: str
    csrf: str
    remote: str
    created: float
    last_used: float

    @property
    def label(self) -> str:
        """A short, non-secret name of the session for the journal."""
        return hashlib.sha256(self.token.encode()).hexdigest()[:12]


class Sessions:
    IDLE = 30 * 60.0
    ABSOLUTE = 12 * 3600.0
    MAX = 64

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._by_token: dict[str, Session] = {}

    def create(self, remote: str) -> Session:
        self._expire()
        while len(self._by_token) >= self.MAX:  # the oldest session makes room
            oldest = min(self._by_token.values(), key=lambda s: s.created)
            del self._by_token[oldest.token]
        now = self._clock()
        s = Session(secrets.token_urlsafe(32), secrets.token_urlsafe(32), remote, now, now)
        self._by_token[s.token] = s
        return s

    def get(self, token: str | None) -> Session | None:
        """The live session for ``token`` (its idle timer restarts), or None."""
        if not token:
            return None
        self._expire()
        s = self._by_token.get(token)
        if s is not None:
            s.last_used = self._clock()
        return s

    def drop(self, token: str | None) -> None:
        if token:
            self._by_token.pop(token, None)

    def __len__(self) -> int:
        self._expire()
        return len(self._by_token)

    def _expire(self) -> None:
        now = self._clock()
        for tok, s in list(self._by_token.items()):
            if now - s.last_used > self.IDLE or now - s.created > self.ABSOLUTE:
                del self._by_token[tok]


def csrf_ok(session: Session, presented: str | None) -> bool:
    return presented is not None and hmac.compare_digest(session.csrf.encode(), presented.encode())


# --------------------------------------------------------------------------- login limit


class LoginLimiter:
    """Counts failed logins per remote address and in total over a sliding window."""

    def __init__(self, clock: Callable[[], float] = time.monotonic, *, per_address: int = 5, global_limit: int = 30,
                 window: float = 300.0) -> None:
        self._clock = clock
        self.per_address = per_address
        self.global_limit = global_limit
        self.window = window
        self._by_addr: dict[str, collections.deque[float]] = {}
        self._all: collections.deque[float] = collections.deque()

    def retry_after(self, addr: str) -> float:
        """0 when ``addr`` may try now; otherwise the seconds until it may."""
        now = self._clock()
        self._prune(now)
        waits = [0.0]
        mine = self._by_addr.get(addr)
        if mine is not None and len(mine) >= self.per_address:
            waits.append(mine[0] + self.window - now)
        if len(self._all) >= self.global_limit:
            waits.append(self._all[0] + self.window - now)
        return max(waits)

    def failed(self, addr: str) -> None:
        now = self._clock()
        self._by_addr.setdefault(addr, collections.deque()).append(now)
        self._all.append(now)

    def succeeded(self, addr: str) -> None:
        self._by_addr.pop(addr, None)

    def _prune(self, now: float) -> None:
        cut = now - self.window
        while self._all and self._all[0] <= cut:
            self._all.popleft()
        for addr, q in list(self._by_addr.items()):
            while q and q[0] <= cut:
                q.popleft()
            if not q:
                del self._by_addr[addr]
