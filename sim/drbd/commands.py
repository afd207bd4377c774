"""What the simulator's ``drbdadm``/``drbdsetup`` front ends can ask, and DRBD's answers.

A front end sends one JSON line ``{"prog": "drbdadm", "argv": [...]}``; the
simulator answers with ``{"o": text}`` (stdout), ``{"e": text}`` (stderr) and
finally ``{"x": exit_code}``; ``events2`` without ``--now`` keeps sending
``{"o": line}`` until the front end goes away. Tests and the demo use
``{"api": ...}`` requests (write, state, held, fail_disk) on the same socket.
``{"api": ...}`` requests (write, state, conf) on the same socket.

Errors are printed the way drbdsetup's ``check_error()`` and drbdadm print
them: ``<obj>: State change failed: (-N) text`` (``<obj>`` is the resource for
DRBD 9 and the minor for 8.4), ``additional info from kernel:``, then
drbdadm's ``Command '...' terminated with exit code N``.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
from typing import Any

from . import render
from .server import Node, Subscriber
from .state import Failure, Refused

STATE_CMDS = {"primary", "secondary", "outdate", "connect", "disconnect", "resume-io", "suspend-io"}


class Out:
    def __init__(self) -> None:
        self.o: list[str] = []
        self.e: list[str] = []


async def serve_client(node: Node, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        line = await reader.readline()
        req = json.loads(line)
        if "api" in req:
            result = await api(node, req)
            writer.write(json.dumps({"r": result}).encode() + b"\n")
            await writer.drain()
            return
        await run_command(node, req["prog"], list(req["argv"]), writer)
    except (ConnectionError, ValueError, KeyError):
        return
    finally:
        with contextlib.suppress(Exception):
            writer.close()


async def _send(writer: asyncio.StreamWriter, **msg: Any) -> None:
    writer.write(json.dumps(msg).encode() + b"\n")
    await writer.drain()


async def api(node: Node, req: dict[str, Any]) -> Any:
    what = req["api"]
    if what == "write":
        return await node.write(int(req.get("kib", 4)), float(req.get("timeout", 5.0)))
    if what == "state":
        return node.view()
    if what == "held":
        return node.data.to_json()
    if what == "fail_disk":
        await node.fail_disk()
        return node.view()
    if what == "disconnect_abruptly":  # as a peer that vanished sees it: no goodbye, no outdating
        await node.disconnect(graceful=False)
        return node.view()
    if what == "conf":  # what drbdadm adjust / net-options do to a live resource: no reconnect
        node.conf.update(req["set"])
        node.publish()
        return node.conf
    raise ValueError(f"unknown api {what!r}")


def _split(argv: list[str]) -> tuple[list[str], set[str]]:
    pos, opts = [], set()
    for a in argv:
        if a == "--":
            continue
        if a.startswith("-"):
            opts.add(a.split("=", 1)[0])
        else:
            pos.append(a)
    return pos, opts


async def run_command(node: Node, prog: str, argv: list[str], writer: asyncio.StreamWriter) -> None:
    v = node.view()
    pos, opts = _split(argv)
    if prog == "drbdadm" and ("--version" in opts or pos[:1] == ["--version"]):
        await _send(writer, o=render.version_vars(v))
        await _send(writer, x=0)
        return
    if not pos:
        await _send(writer, e=f"USAGE: {prog} COMMAND [OPTION...] {{all|RESOURCE...}}\n")
        await _send(writer, x=20)
        return
    cmd, args = pos[0], pos[1:]
    if cmd == "events2":
        await events2(node, args, opts, writer)
        return
    out = Out()
    code = await dispatch(node, prog, cmd, args, opts, out)
    if out.o:
        await _send(writer, o="".join(out.o))
    if out.e:
        await _send(writer, e="".join(out.e))
    await _send(writer, x=code)


def _resource_ok(node: Node, prog: str, cmd: str, args: list[str], out: Out) -> bool:
    res = node.cfg["resource"]
    minor = str(node.cfg.get("minor", 0))
    if not args:
        if cmd in ("status", "show"):
            return True
        out.e.append(f"USAGE: {prog} {cmd} {{all|RESOURCE...}}\n")
        return False
    obj = args[0].split(":")[0]
    if obj in (res, "all") or (prog == "drbdsetup" and obj == minor):
        return True
    if prog == "drbdadm":
        out.e.append(f"'{obj}' not defined in your config (for this host).\n")
    else:
        out.e.append(f"{obj}: No such resource\n")
    return False


def _setup_argv(node: Node, cmd: str, opts: set[str]) -> str:
    c = node.cfg
    extra = "".join(f" {o}" for o in sorted(opts))
    if c["version"] == "8.4":
        return f"drbdsetup-84 {cmd} {c.get('minor', 0)}{extra}"
    obj = c["resource"] if cmd in ("primary", "secondary") else (
        f"{c['resource']} {c['peer_node_id']}" if cmd in ("connect", "disconnect") else str(c.get("minor", 0)))
    return f"drbdsetup {cmd} {obj}{extra}"


async def dispatch(node: Node, prog: str, cmd: str, args: list[str], opts: set[str], out: Out) -> int:
    v = node.view()
    if not _resource_ok(node, prog, cmd, args, out):
        return 10 if out.e and "USAGE" not in out.e[-1] else 1
    if cmd in STATE_CMDS:
        obj = str(node.cfg.get("minor", 0)) if node.cfg["version"] == "8.4" else node.cfg["resource"]
        try:
            if cmd == "primary":
                await node.primary(force="--force" in opts or "--overwrite-data-of-peer" in opts)
            elif cmd == "secondary":
                await node.secondary()
            elif cmd == "outdate":
                await node.outdate()
            elif cmd == "connect":
                await node.connect("--discard-my-data" in opts)
            elif cmd == "disconnect":
                await node.disconnect()
            elif cmd == "resume-io":
                await node.resume_io()
            else:
                await node.suspend_io()
            return 0
        except Refused as e:
            out.e.append(f"{obj}: State change failed: ({e.code}) {Refused.TEXT.get(e.code, 'State change failed')}\n")
            if e.info:
                out.e.append("additional info from kernel:\n" + "".join(f"{i}\n" for i in e.info))
            code = e.exit_code
        except Failure as f:
            out.e.append(f"{obj}: Failure: ({f.code}) {f.text}\n")
            code = 10
        if prog == "drbdadm":
            out.e.append(f"Command '{_setup_argv(node, cmd, opts - {'--force'})}' terminated with exit code {code}\n")
        return code
    if cmd == "role":
        out.o.append(render.role_line(v))
    elif cmd == "cstate":
        out.o.append(render.cstate_line(v))
    elif cmd == "dstate":
        out.o.append(render.dstate_line(v))
    elif cmd == "status":
        if "--json" in opts:
            if v["version"] == "8.4" and prog == "drbdsetup":
                out.e.append("status: unrecognized option '--json'\n")
                return 20
            out.o.append(render.status_json(v))
        else:
            out.o.append(render.status_text(v, "--verbose" in opts))
    elif cmd in ("get-gi", "show-gi"):
        if v["disk"] == "Diskless":
            out.e.append("Device has no disk\n")
            return 1
        out.o.append(render.gi_line(v) if cmd == "get-gi" else render.show_gi(v))
    elif cmd == "show" and prog == "drbdsetup":
        out.o.append(render.show(v, "--show-defaults" in opts))
    elif cmd == "dump" and prog == "drbdadm":
        out.o.append(render.dump(v))
    elif cmd == "sh-minor" and prog == "drbdadm":
        out.o.append(f"{v['minor']}\n")
    else:
        out.e.append(f"{'drbdadm' if prog == 'drbdadm' else 'drbdsetup'}: Unknown command '{cmd}'\n")
        return 20
    return 0


def _stamp() -> str:
    return datetime.datetime.now().astimezone().isoformat(timespec="microseconds") + " "


async def events2(node: Node, args: list[str], opts: set[str], writer: asyncio.StreamWriter) -> None:
    res = node.cfg["resource"]
    if args and args[0] not in (res, "all"):
        await _send(writer, x=0)  # drbdsetup events2 of an unknown resource prints nothing (missing_ok)
        return
    stats = "--statistics" in opts or "--full" in opts
    ts = "--timestamps" in opts
    sub = Subscriber(stats)
    queue = sub.queue
    for ln in render.exists_dump(node.view(), stats):
        queue.put_nowait(ln)
    if "--now" not in opts:
        node.subscribers.append(sub)
    else:
        queue.put_nowait(None)
    try:
        while True:
            item = await queue.get()
            if item is None:
                break
            await _send(writer, o=(_stamp() if ts else "") + item + "\n")
        await _send(writer, x=0)
    finally:
        with contextlib.suppress(ValueError):
            node.subscribers.remove(sub)
