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
from .console import password_cli
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
    ]
    if st.get("heartbeat"):
        lines += render_heartbeat(st["heartbeat"])
    lines += [
        f"Daemon: pid {st['pid']}, version {st['version']}, up {_fmt_duration(st['uptime_seconds'])}",
        f"Config: {st['config_path']} (settings fingerprint {st['settings_fingerprint']})",
    ]
    return "\n".join(lines)


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x * 100:.1f}%"


def _peer_state(hb: dict[str, Any]) -> str:
    state = hb["state"]
    silent = hb.get("silent_for")
    if state == "unseen":
        return "not heard yet"
    if state == "lost":
        return f"LOST (nothing valid on any link for {silent:.1f}s)" if silent is not None else "LOST"
    if state == "left":
        return "left (announced a clean stop)"
    if state == "restarting":
        left = hb.get("restart_expected_in")
        return "restarting" + (f" (expected back within {max(0.0, left):.0f}s)" if left is not None else "")
    if state == "incompatible":
        p = hb["protocol"]
        return (f"INCOMPATIBLE (alive; it sends protocol {p['peer_sends'] or '?'} and reads up to {p['peer_reads_up_to']}, "
                f"this node reads {p['this_node_reads'][0]}..{p['this_node_reads'][1]})")
    return str(state)


def render_heartbeat(hb: dict[str, Any]) -> list[str]:
    """The peer, its links, the admin intent and what was dropped, for ``clevervm status``."""
    keys, proto = hb["keys"], hb["protocol"]
    head = f"Peer {hb['name']}: {_peer_state(hb)}"
    if hb.get("incarnation") is not None:
        head += f"   incarnation {hb['incarnation']}"
    if proto.get("peer_sends") is not None:
        head += f", protocol {proto['peer_sends']}"
    if keys.get("peer_uses"):
        head += f", key {keys['peer_uses']} ({keys['peer_uses_id']})"
    lines = [head]
    width = max(len(ln["name"]) for ln in hb["links"])
    for i, ln in enumerate(hb["links"]):
        name = ln["name"].ljust(width)
        if not ln["bound"]:
            lines.append(f"  link {name}  NOT BOUND: {ln['bind_error']}")
            continue
        state = "up  " if ln["up"] else "DOWN"
        heard = "nothing heard" if ln["silent_for"] is None else f"{state} heard {ln['silent_for']:.2f}s ago"
        rtt = "-" if ln["rtt_smoothed_ms"] is None else f"{ln['rtt_smoothed_ms']:.2f} ms"
        extra = f", {ln['send_errors']} send errors" if ln["send_errors"] else ""
        lines.append(f"  link {name}  {heard}, loss in {_pct(ln['loss_in'])} out {_pct(ln['loss_out'])}, rtt {rtt}{extra}")
        if ln["peer_link"] is not None and ln["peer_link"] != i:
            lines.append(f"    this link carries {hb['name']}'s link #{ln['peer_link'] + 1}: list [[heartbeat.link]] in the same order on both nodes")
    settings = hb["settings"]
    if settings["mismatch"]:
        lines.append(f"  SETTINGS DIFFER: this node {settings['this_node']}, {hb['name']} {settings['peer']}"
                     " (compare the [heartbeat], [fencing], [policy] and resource settings of both nodes)")
    intent = hb["intent"]
    rec = intent["record"]
    ack = f"acknowledged by {hb['name']}" if intent["acknowledged"] else "not yet acknowledged by the peer"
    origin = f" by {rec['origin']}" if rec["origin"] else ""
    lines.append(f"Intent: version {rec['version']}{origin} ({intent['summary']}): {ack}")
    if intent.get("superseded"):
        lost = intent["superseded"]
        lines.append(f"  this node's change (version {lost['version']}) was replaced before the peer acknowledged it; check the record")
    if keys.get("next_key_file"):
        lines.append(f"Keys: sending with key_file ({keys['key_file']}), also accepting next_key_file ({keys['next_key_file']})")
    if hb["drops"]:
        lines.append("Dropped datagrams: " + ", ".join(f"{k} {v}" for k, v in sorted(hb["drops"].items())))
    return lines


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


def cmd_console_password(ctx: Context) -> int:
    return password_cli.run(ctx.args)


def cmd_daemon_restart(ctx: Context) -> int:
    got = ctx.call("shutdown", restart=True)
    print(f"clever-clusterd is restarting; the peer expects it back within {got['expected']:g}s "
          "(systemd starts it again: the unit has RestartForceExitStatus=75)")
    return EXIT_OK


VERBS: dict[str, tuple[Callable[[Context], int], str]] = {
    "status": (cmd_status, "show the cluster state"),
    "reload": (cmd_reload, "re-read the configuration file (like SIGHUP)"),
    "fence-peer": (cmd_handler_help, "DRBD's fence-peer handler (exit codes are DRBD's: 4 outdated, 7 fenced, 1 otherwise)"),
    "unfence-peer": (cmd_handler_help, "DRBD's unfence-peer handler"),
    "daemon-restart": (cmd_daemon_restart, "restart this node's daemon, telling the peer to expect it back (resources keep running)"),
    "console-password": (cmd_console_password, "set the web console's password (writes a salted hash; the console is read-only without one)"),
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
        if name == "console-password":
            password_cli.add_arguments(sp)
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
