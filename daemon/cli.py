"""``clevervm``: the operator's command line.

Talks to the local daemon over the control socket. Exit codes (DESIGN
section 9): 0 ok, 1 failed or refused, 2 usage, 3 daemon unreachable. DRBD's
handler verbs (``fence-peer``, ``unfence-peer``) are the one exception: they
speak DRBD's exit codes and are dispatched to :mod:`.handler_cli` before any
argument parsing (whose usage error would be exit 2).

Every read verb takes ``--json``; the JSON is the daemon's answer as is (see
docs/operations.md for the schema). Errors are one line on stderr, never a
traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from . import config as config_mod
from .control import CommandFailed, ControlClient, DaemonUnreachable, socket_path
from .handler_cli import handler_verb, run_handler

DEFAULT_CONFIG = Path(os.environ.get("CLEVER_CLUSTER_CONFIG", "/etc/clever-cluster/clever-cluster.toml"))

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_UNREACHABLE = 0, 1, 2, 3


class UsageError(Exception):
    pass


class ConfigProblem(Exception):
    pass


class Context:
    """What every verb needs: where the daemon is, and how to print."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.json = bool(getattr(args, "json", False))
        self._socket: Path | None = args.socket

    @property
    def socket(self) -> Path:
        if self._socket is None:
            try:
                self._socket = socket_path(config_mod.runtime_dir_of(self.args.config))
            except config_mod.ConfigError as e:
                raise ConfigProblem(e.report()) from None
        return self._socket

    def client(self, timeout: float | None = 10.0) -> ControlClient:
        return ControlClient(self.socket, timeout=timeout)

    def call(self, cmd: str, **kw: Any) -> Any:
        with self.client() as c:
            return c.call(cmd, **kw)


def _fmt_duration(seconds: float) -> str:
    s = int(seconds)
    d, s = divmod(s, 86400)
    h, s = divmod(s, 3600)
    m, s = divmod(s, 60)
    if d:
        return f"{d}d {h}h {m}m"
    if h:
        return f"{h}h {m}m {s}s"
    if m:
        return f"{m}m {s}s"
    return f"{seconds:.1f}s"


def render_status(st: dict[str, Any]) -> str:
    lines = [
        f"Cluster {st['cluster']}   last updated {time.strftime('%Y-%m-%d %H:%M:%S')}",
        f"Node {st['node']}: phase {st['phase']}   (peer {st['peer']})",
        f"  {st['verdict']}",
        f"Daemon: pid {st['pid']}, version {st['version']}, up {_fmt_duration(st['uptime_seconds'])}",
        f"Config: {st['config_path']} (settings fingerprint {st['settings_fingerprint']})",
    ]
    return "\n".join(lines)


def cmd_status(ctx: Context) -> int:
    st = ctx.call("status")
    if ctx.json:
        print(json.dumps(st, indent=2, sort_keys=True))
    else:
        print(render_status(st))
    return EXIT_OK


def cmd_reload(ctx: Context) -> int:
    ctx.call("reload")
    print("configuration reloaded")
    return EXIT_OK


def cmd_handler_help(ctx: Context) -> int:  # dispatched before argparse; listed for --help only
    return run_handler([ctx.args.verb])


VERBS: dict[str, tuple[Callable[[Context], int], str]] = {
    "status": (cmd_status, "show the cluster state"),
    "reload": (cmd_reload, "re-read the configuration file (like SIGHUP)"),
    "fence-peer": (cmd_handler_help, "DRBD's fence-peer handler (exit codes are DRBD's: 4 outdated, 7 fenced, 1 otherwise)"),
    "unfence-peer": (cmd_handler_help, "DRBD's unfence-peer handler"),
}
READ_VERBS = {"status"}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="clevervm", description="Operate the clever-cluster two-node HA cluster.")
    p.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help=f"configuration file (default {DEFAULT_CONFIG})")
    p.add_argument("--socket", type=Path, help="control socket (default: from the configuration)")
    sub = p.add_subparsers(dest="verb", metavar="VERB")
    for name, (_fn, help_) in VERBS.items():
        sp = sub.add_parser(name, help=help_, description=help_)
        if name in READ_VERBS:
            sp.add_argument("--json", action="store_true", help="machine-readable output")
    return p


def main(argv: list[str] | None = None) -> int:
    raw = sys.argv[1:] if argv is None else list(argv)
    if handler_verb(raw) is not None:
        # DRBD's handlers speak DRBD's exit codes, not clevervm's (DESIGN section 9).
        return run_handler(raw)
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # argparse prints its usage message itself
        return EXIT_USAGE if e.code else EXIT_OK
    if not args.verb:
        parser.print_usage(sys.stderr)
        return EXIT_USAGE
    fn, _ = VERBS[args.verb]
    ctx = Context(args)
    try:
        return fn(ctx)
    except UsageError as e:
        print(f"clevervm: {e}", file=sys.stderr)
        return EXIT_USAGE
    except ConfigProblem as e:
        print(f"clevervm: {e}", file=sys.stderr)
        return EXIT_FAILED
    except DaemonUnreachable as e:
        print(f"clevervm: {e}", file=sys.stderr)
        return EXIT_UNREACHABLE
    except CommandFailed as e:
        print(f"clevervm: {e}", file=sys.stderr)
        if isinstance(e.details, list):
            for d in e.details:
                print(f"  {d}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        return EXIT_FAILED
    except BrokenPipeError:
        return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
