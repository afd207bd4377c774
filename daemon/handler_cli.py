"""``clevervm fence-peer`` / ``clevervm unfence-peer``: DRBD's handlers.

DRBD runs the handler with its environment (``DRBD_RESOURCE``,
``DRBD_PEER_NODE_ID``/``DRBD_PEER``...) and waits for it; the handler asks
the local daemon and exits with DRBD's code.

Invariants:
- fence-peer exits 4 (peer outdated) or 7 (peer fenced, with a record) only
  on the daemon's explicit verdict, and 1 on every other path: daemon
  unreachable, socket missing, EOF, error answer, exception, signal, bad
  environment or arguments. Never 3, 5 or 6 (DRBD would resume I/O on them).
- No deadline of its own: DRBD waits for the handler, and so does it.
- It does not share ``clevervm``'s exit codes (3 = daemon unreachable would
  be "peer is outdated" to DRBD).
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path
from types import FrameType

HANDLER_VERBS = ("fence-peer", "unfence-peer")
ENV_PREFIXES = ("DRBD_", "UP_TO_DATE_NODES")
ALLOWED = {"fence-peer": (1, 4, 7), "unfence-peer": (0, 1)}


class _Stop(BaseException):
    pass


def handler_verb(argv: list[str]) -> str | None:
    """The handler verb if this clevervm invocation is one (options before it may take a value)."""
    i = 0
    while i < len(argv):
        a = argv[i]
        if a in ("--config", "--socket"):
            i += 2
            continue
        if a.startswith("-"):
            i += 1
            continue
        return a if a in HANDLER_VERBS else None
    return None


def _say(msg: str) -> None:
    try:
        print(f"clevervm: {msg}", file=sys.stderr, flush=True)
    except Exception:  # noqa: BLE001 - a closed stderr must not change the exit code
        pass


def _on_signal(signum: int, frame: FrameType | None) -> None:
    raise _Stop(signum)


def run_handler(argv: list[str]) -> int:
    verb = handler_verb(argv) or "fence-peer"
    try:
        code = _run(argv, verb)
    except _Stop as s:
        _say(f"{verb}: stopped by signal {s.args[0]}; DRBD keeps I/O frozen")
        code = 1
    except BaseException as e:  # noqa: BLE001 - every path that is not an explicit verdict is exit 1
        _say(f"{verb}: {type(e).__name__}: {e}")
        code = 1
    return code if code in ALLOWED[verb] else 1


def _run(argv: list[str], verb: str) -> int:
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGPIPE):
        signal.signal(sig, _on_signal)
    from . import config as config_mod
    from .control import CommandFailed, ControlClient, DaemonUnreachable, socket_path
    from .fence_peer import handler_exit

    config = Path(os.environ.get("CLEVER_CLUSTER_CONFIG", "/etc/clever-cluster/clever-cluster.toml"))
    sock: Path | None = None
    i, seen_verb = 0, False
    while i < len(argv):
        a = argv[i]
        if a in ("--config", "--socket") and i + 1 < len(argv):
            if a == "--config":
                config = Path(argv[i + 1])
            else:
                sock = Path(argv[i + 1])
            i += 2
            continue
        if a == verb and not seen_verb:
            seen_verb = True
            i += 1
            continue
        _say(f"{verb}: unexpected argument {a!r}")
        return 1
    env = {k: v for k, v in os.environ.items() if k.startswith(ENV_PREFIXES)}
    if not env.get("DRBD_RESOURCE"):
        _say(f"{verb}: DRBD_RESOURCE is not set; this command is run by DRBD as its {verb} handler")
        return 1
    if sock is None:
        try:
            sock = socket_path(config_mod.runtime_dir_of(config))
        except config_mod.ConfigError as e:
            _say(f"{verb}: {e}")
            return 1
    try:
        with ControlClient(sock, timeout=None) as client:
            reply = client.call(verb, env=env)
    except DaemonUnreachable as e:
        _say(f"{verb}: {e}; DRBD keeps I/O frozen")
        return 1
    except CommandFailed as e:
        _say(f"{verb}: the daemon refused: {e}")
        return 1
    code = handler_exit(verb, reply)
    reason = reply.get("reason") if isinstance(reply, dict) else None
    _say(f"{verb}: exit {code}: {reason or reply}")
    return code
