"""Typed errors of DRBD commands, from exit code and stderr (reference section 5.2).

``drbdsetup``'s ``check_error()`` prints ``<obj>: State change failed: (-N)
text`` (exit 11, 17 for -2, 5 for -16, 16 for -4) or ``<obj>: Failure: (NNN)
text`` (exit 10); ``drbdadm`` repeats the exit code and adds ``Command '...'
terminated with exit code N``.

Invariant: :func:`classify` never raises; anything it does not recognise is a
plain :class:`DrbdCommandError` with the exit code and stderr kept.
"""

from __future__ import annotations

import re

_SS = re.compile(r"State change failed: \((-\d+)\)\s*(.*)")
_ERR = re.compile(r"Failure: \((\d+)\)\s*(.*)")


class DrbdError(Exception):
    """Base class of everything the DRBD adapter raises."""


class DrbdUnavailable(DrbdError):
    """The command could not be run or the DRBD module did not answer (exit 20, not found)."""


class CommandTimeout(DrbdError):
    """The command did not finish before its deadline (it was killed)."""


class DrbdCommandError(DrbdError):
    def __init__(self, argv: list[str], exit_code: int, stderr: str, state_code: int | None = None,
                 failure_code: int | None = None) -> None:
        self.argv = list(argv)
        self.exit_code = exit_code
        self.stderr = stderr
        self.state_code = state_code
        self.failure_code = failure_code
        first = next((ln for ln in stderr.splitlines() if ln.strip()), "no message")
        super().__init__(f"{' '.join(argv)} exited {exit_code}: {first.strip()}")

    @property
    def kernel_info(self) -> list[str]:
        """Lines after 'additional info from kernel:' (e.g. the openers of a held device)."""
        lines = self.stderr.splitlines()
        out, on = [], False
        for ln in lines:
            if ln.startswith("additional info from kernel:"):
                on = True
                continue
            if on and not ln.startswith("Command '"):
                out.append(ln.strip())
        return [ln for ln in out if ln]


class NoSuchResource(DrbdCommandError):
    """The resource is not configured (exit 10)."""


class MultiplePrimaries(DrbdCommandError):
    """(-1) The peer is Primary and two primaries are not allowed."""


class NoUpToDateData(DrbdCommandError):
    """(-2), exit 17: no UpToDate data reachable (or Consistent and the peer could not be fenced)."""


class RefusedWhileConnected(DrbdCommandError):
    """(-6) Refusing to be Outdated while Connected."""


class PeerNotOutdated(DrbdCommandError):
    """(-7) Refusing to be Primary while peer is not outdated (the fence-peer handler did not succeed)."""


class HeldOpen(DrbdCommandError):
    """(-12) Device is held open by someone (mounted, or a process holds it)."""


class DiskLowerThanOutdated(DrbdCommandError):
    """(-16) exit 5: the disk is already Inconsistent or worse."""


class NoQuorum(DrbdCommandError):
    """(-25) No quorum."""


_BY_STATE: dict[int, type[DrbdCommandError]] = {
    -1: MultiplePrimaries, -2: NoUpToDateData, -6: RefusedWhileConnected, -7: PeerNotOutdated,
    -12: HeldOpen, -16: DiskLowerThanOutdated, -25: NoQuorum,
}


def classify(argv: list[str], exit_code: int, stderr: str) -> DrbdError:
    m = _SS.search(stderr)
    state = int(m.group(1)) if m else None
    f = _ERR.search(stderr)
    failure = int(f.group(1)) if f else None
    if state is not None and state in _BY_STATE:
        return _BY_STATE[state](argv, exit_code, stderr, state, failure)
    if exit_code == 17:
        return NoUpToDateData(argv, exit_code, stderr, state, failure)
    if exit_code == 5 and state is None:
        return DiskLowerThanOutdated(argv, exit_code, stderr, state, failure)
    low = stderr.lower()
    if failure == 158 or "no such resource" in low or "unknown resource" in low or "not defined in your config" in low:
        return NoSuchResource(argv, exit_code, stderr, state, failure)
    if exit_code == 20 and state is None and failure is None:
        return DrbdUnavailable(f"{' '.join(argv)} exited 20: {stderr.strip() or 'DRBD did not answer'}")
    return DrbdCommandError(argv, exit_code, stderr, state, failure)
