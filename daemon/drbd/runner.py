"""Running ``drbdadm``/``drbdsetup`` with a deadline, and long-running children.

Invariants:
- A command that outlives its deadline is killed with its whole process
  group and reported as :class:`CommandTimeout`; it never blocks the loop.
- A missing binary is :class:`DrbdUnavailable`, a non-zero exit is the typed
  error from :func:`errors.classify`; stdout is returned only on exit 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import signal

from . import errors


@dataclasses.dataclass(frozen=True)
class Result:
    argv: list[str]
    exit_code: int
    stdout: str
    stderr: str


async def run(argv: list[str], timeout: float) -> Result:
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            start_new_session=True)
    except FileNotFoundError:
        raise errors.DrbdUnavailable(f"{argv[0]}: command not found") from None
    except PermissionError:
        raise errors.DrbdUnavailable(f"{argv[0]}: permission denied") from None
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        kill_group(proc)
        await proc.wait()
        raise errors.CommandTimeout(f"{' '.join(argv)} did not finish within {timeout:g} s (killed)") from None
    except asyncio.CancelledError:
        kill_group(proc)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(proc.wait(), 2.0)  # reap it; its transport must not outlive the loop
        raise
    rc = proc.returncode if proc.returncode is not None else -1
    return Result(argv, rc, out.decode(errors="replace"), err.decode(errors="replace"))


async def check(argv: list[str], timeout: float) -> str:
    """stdout of a command that must succeed; the typed DRBD error otherwise."""
    r = await run(argv, timeout)
    if r.exit_code != 0:
        raise errors.classify(argv, r.exit_code, r.stderr)
    return r.stdout


def kill_group(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
