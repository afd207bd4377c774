"""``clevervm``: the operator's command line.

Talks to the local daemon over the control socket. Exit codes (DESIGN
section 9): 0 ok, 1 failed or refused, 2 usage, 3 daemon unreachable. DRBD's
handler verbs (``fence-peer``, ``unfence-peer``) are the one exception: they
speak DRBD's exit codes and are dispatched to :mod:`.handler_cli` before any
argument parsing (whose usage error would be exit 2).

Every read verb takes ``--json``; the JSON is the daemon's answer as is
(docs/status-schema.md). Every verb that changes something prints what
happens next. Errors are one line on stderr, never a traceback. With the
daemon down, ``status`` shows what it can read locally under a "not
running" banner and exits 3.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

from . import clilocal, clirender
from . import config as config_mod
from .console import password_cli
from .control import CommandFailed, ControlClient, DaemonUnreachable, socket_path
from .handler_cli import handler_verb, run_handler
from .schema import parse_duration

DEFAULT_CONFIG = Path(os.environ.get("CLEVER_CLUSTER_CONFIG", "/etc/clever-cluster/clever-cluster.toml"))

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_UNREACHABLE = 0, 1, 2, 3
SLOW = 120.0  # verbs that run a sequence or a probe (start, stop, check, split-brain)


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

    def call(self, cmd: str, timeout: float | None = 10.0, **kw: Any) -> Any:
        with self.client(timeout) as c:
            return c.call(cmd, **kw)

    def show(self, obj: Any, render: Callable[[Any], str]) -> None:
        print(json.dumps(obj, indent=2, sort_keys=True) if self.json else render(obj))


def _next(got: dict[str, Any]) -> str:
    return str(got.get("next", "done"))


def cmd_status(ctx: Context) -> int:
    try:
        st = ctx.call("status")
    except DaemonUnreachable as e:
        print(f"clevervm: {e}", file=sys.stderr)
        local = clilocal.local_status(ctx.args.config)
        local["unreachable"] = str(e)
        ctx.show(local, clilocal.render_local)
        return EXIT_UNREACHABLE
    ctx.show(st, clirender.render_status)
    return EXIT_OK


def cmd_why(ctx: Context) -> int:
    ctx.show(ctx.call("why"), clirender.render_why)
    return EXIT_OK


def cmd_history(ctx: Context) -> int:
    ctx.show(ctx.call("history", decisions=ctx.args.decisions), clirender.render_history)
    return EXIT_OK


def cmd_check(ctx: Context) -> int:
    got = ctx.call("check", timeout=SLOW)
    ctx.show(got, clirender.render_check)
    return EXIT_OK if got["ok"] else EXIT_FAILED


def _simple(cmd: str, **fixed: Any) -> Callable[[Context], int]:
    def run(ctx: Context) -> int:
        got = ctx.call(cmd, timeout=SLOW, **fixed)
        print(json.dumps(got, indent=2, sort_keys=True) if ctx.json else _next(got))
        return EXIT_OK
    return run


def cmd_migrate(ctx: Context) -> int:
    lifetime = None
    if ctx.args.lifetime is not None:
        try:
            lifetime = parse_duration(ctx.args.lifetime)
        except ValueError as e:
            raise UsageError(f"--lifetime: {e}") from None
    got = ctx.call("migrate", lifetime=lifetime, force=ctx.args.force, timeout=SLOW)
    print(json.dumps(got, indent=2, sort_keys=True) if ctx.json else _next(got))
    return EXIT_OK


def cmd_node_verb(cmd: str) -> Callable[[Context], int]:
    def run(ctx: Context) -> int:
        kw = {"node": ctx.args.node} if ctx.args.node else {}
        got = ctx.call(cmd, **kw)
        print(json.dumps(got, indent=2, sort_keys=True) if ctx.json else _next(got))
        return EXIT_OK
    return run


def cmd_maintenance(ctx: Context) -> int:
    if ctx.args.offline:
        if ctx.args.state != "on":
            raise UsageError("--offline exists only for maintenance on (the daemon itself leaves maintenance, after its checks)")
        try:
            ctx.call("ping", timeout=3.0)
        except DaemonUnreachable as e:
            try:
                print(clilocal.maintenance_on_offline(ctx.args.config, str(e)))
            except clilocal.OfflineRefused as r:
                raise CommandFailed(str(r), "refused") from None
            return EXIT_OK
        raise CommandFailed("the daemon is running: use clevervm maintenance on (without --offline)", "refused")
    got = ctx.call("maintenance", on=ctx.args.state == "on")
    print(json.dumps(got, indent=2, sort_keys=True) if ctx.json else _next(got))
    return EXIT_OK


def cmd_cleanup(ctx: Context) -> int:
    got = ctx.call("cleanup", **({"vm": ctx.args.vm} if ctx.args.vm else {}))
    print(json.dumps(got, indent=2, sort_keys=True) if ctx.json else _next(got))
    return EXIT_OK


def cmd_unblock(ctx: Context) -> int:
    got = ctx.call("unblock")
    if ctx.json:
        print(json.dumps(got, indent=2, sort_keys=True))
    else:
        print("checked: " + "; ".join(got.get("checked", [])))
        print(_next(got))
    return EXIT_OK if got.get("blocked") is None else EXIT_FAILED


def cmd_fence(ctx: Context) -> int:
    got = ctx.call("fence", node=ctx.args.node)
    print(json.dumps(got, indent=2, sort_keys=True) if ctx.json else _next(got))
    return EXIT_OK


def _typed(prompt: str) -> str:
    print(prompt, end="", flush=True, file=sys.stderr)
    line = sys.stdin.readline()
    return line.strip()


def cmd_confirm_fenced(ctx: Context) -> int:
    node = ctx.args.node
    if ctx.args.accept_data_loss:
        ev = ctx.call("confirm-fenced", node=node, accept_data_loss=True, preview=True)["evidence"]
        print("Promoting this node may lose data. What is known:", file=sys.stderr)
        print(f"  epoch here {ev['epoch_here']}, peer's last seen {ev['epoch_peer_seen']}", file=sys.stderr)
        print(f"  data UUID here {ev['data_uuid_here']}, on the peer when last heard {ev['data_uuid_peer_last_heard']}", file=sys.stderr)
        print(f"  local disk {ev['disk_here']}; peer last heard {ev['peer_last_heard_seconds_ago']} s ago", file=sys.stderr)
        for x in ev["may_be_lost"]:
            print(f"  - {x}", file=sys.stderr)
        if ctx.args.yes != node and _typed(f"Type {node} to confirm that it is powered off and that data may be lost: ") != node:
            raise UsageError("not confirmed; nothing recorded")
    got = ctx.call("confirm-fenced", node=node, accept_data_loss=ctx.args.accept_data_loss)
    print(json.dumps(got, indent=2, sort_keys=True) if ctx.json else _next(got))
    return EXIT_OK


def cmd_split_brain(ctx: Context) -> int:
    a = ctx.args
    if not a.resolve:
        ctx.show(ctx.call("split-brain", timeout=SLOW), clirender.render_split_brain)
        return EXIT_OK
    if not a.victim:
        raise UsageError("--resolve needs --victim NODE")
    confirm = a.yes if a.yes else _typed(f"The changes on {a.victim} since the split will be DISCARDED. Type {a.victim} to go on: ")
    got = ctx.call("split-brain", resolve=True, victim=a.victim, confirm=confirm, timeout=SLOW)
    ctx.show(got, clirender.render_split_brain)
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
    "status": (cmd_status, "show the cluster state (exit 3 with what can be read locally when the daemon is down)"),
    "why": (cmd_why, "the current decision, its reason code and every input that mattered"),
    "history": (cmd_history, "recent decisions and failover/handover timelines with per-phase durations"),
    "check": (cmd_check, "pre-flight checks of this node and the cluster (exit 1 on problems)"),
    "start": (_simple("start"), "start (restore) the managed VMs on this node directly, bypassing the cluster"),
    "stop": (_simple("stop"), "save the managed VMs on this node directly, bypassing the cluster"),
    "forcestart": (_simple("forcestart"), "set the target role to started (cluster-wide)"),
    "forcestop": (_simple("forcestop"), "set the target role to stopped: VMs saved and kept stopped (cluster-wide)"),
    "cleanup": (cmd_cleanup, "clear fail counts (of one VM, or all) so a VM may start again"),
    "migrate": (cmd_migrate, "ban this node so the resources move to the peer by handover"),
    "unmigrate": (_simple("unmigrate"), "lift the migrate ban"),
    "standby": (cmd_node_verb("standby"), "put a node (default: this one) in standby"),
    "unstandby": (cmd_node_verb("unstandby"), "take a node (default: this one) out of standby"),
    "maintenance": (cmd_maintenance, "maintenance on|off: the cluster only observes"),
    "fence": (cmd_fence, "fence the peer now (an operator-requested, verified fence)"),
    "confirm-fenced": (cmd_confirm_fenced, "record that the peer is powered off (you checked it yourself)"),
    "unblock": (cmd_unblock, "leave BLOCKED once its cause is gone"),
    "split-brain": (cmd_split_brain, "the evidence of a split brain and the recovery commands"),
    "reload": (cmd_reload, "re-read the configuration file (like SIGHUP)"),
    "fence-peer": (cmd_handler_help, "DRBD's fence-peer handler (exit codes are DRBD's: 4 outdated, 7 fenced, 1 otherwise)"),
    "unfence-peer": (cmd_handler_help, "DRBD's unfence-peer handler"),
    "daemon-restart": (cmd_daemon_restart, "restart this node's daemon, telling the peer to expect it back (resources keep running)"),
    "console-password": (cmd_console_password, "set the web console's password (writes a salted hash; the console is read-only without one)"),
}
JSON_VERBS = set(VERBS) - {"fence-peer", "unfence-peer", "reload", "daemon-restart", "console-password"}


def _decisions(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if not 1 <= n <= 200:
        raise argparse.ArgumentTypeError(f"{n} is not from 1 to 200")
    return n


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr (what is wrong, and where the help is) and exit 2."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.verb_parsers: dict[str, argparse.ArgumentParser] = {}

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: {message} (see {self.prog} --help)\n")


EPILOG = """exit codes: 0 ok; 1 refused or failed (the reason is one line on stderr; also
check problems); 2 usage (the command line is wrong); 3 the daemon is
unreachable (status then shows what this node can read locally).
fence-peer/unfence-peer are DRBD's handlers and exit with DRBD's codes.
Every read verb (status, why, history, check, split-brain) and every verb
that changes something takes --json. See docs/operations.md."""


def _parser() -> _Parser:
    p = _Parser(prog="clevervm", description="Operate the clever-cluster two-node HA cluster.", epilog=EPILOG,
                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help=f"configuration file (default {DEFAULT_CONFIG})")
    p.add_argument("--socket", type=Path, help="control socket (default: from the configuration)")
    sub = p.add_subparsers(dest="verb", metavar="VERB")
    for name, (_fn, help_) in VERBS.items():
        sp = sub.add_parser(name, help=help_, description=help_)
        p.verb_parsers[name] = sp
        if name in JSON_VERBS:
            sp.add_argument("--json", action="store_true", help="machine-readable output")
        if name == "console-password":
            password_cli.add_arguments(sp)
        elif name == "history":
            sp.add_argument("--decisions", type=_decisions, default=50, help="how many recent decisions (1..200)")
        elif name == "migrate":
            sp.add_argument("--lifetime", help="the ban expires after this long (e.g. 30m, 2h)")
            sp.add_argument("--force", action="store_true", help="ban even when the pre-flight fails")
        elif name in ("standby", "unstandby"):
            sp.add_argument("node", nargs="?", help="node name (default: this node)")
        elif name == "maintenance":
            sp.add_argument("state", choices=("on", "off"))
            sp.add_argument("--offline", action="store_true",
                            help="with the daemon stopped: write maintenance on into its state, so it starts observing only")
        elif name == "cleanup":
            sp.add_argument("vm", nargs="?", help="only this VM")
        elif name == "fence":
            sp.add_argument("node", help="the peer's name, typed out")
        elif name == "confirm-fenced":
            sp.add_argument("node", help="the peer's name, typed out")
            sp.add_argument("--accept-data-loss", action="store_true", help="also promote a disk that is not UpToDate (S3)")
            sp.add_argument("--yes", metavar="NODE", help="the typed confirmation, for scripts")
        elif name == "split-brain":
            sp.add_argument("--resolve", action="store_true", help="run the recovery for this node's part")
            sp.add_argument("--victim", help="the node whose changes are discarded")
            sp.add_argument("--yes", metavar="NODE", help="the typed confirmation (the victim's name), for scripts")
    return p


def main(argv: list[str] | None = None) -> int:
    raw = sys.argv[1:] if argv is None else list(argv)
    if handler_verb(raw) is not None:
        # DRBD's handlers speak DRBD's exit codes, not clevervm's (DESIGN section 9).
        return run_handler(raw)
    parser = _parser()
    try:
        args, extra = parser.parse_known_args(argv)
        if extra:  # named by the verb's parser, so the message points at the verb's --help
            (parser.verb_parsers.get(args.verb) or parser).error(f"unrecognized arguments: {' '.join(extra)}")
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
