"""``clevervm fence-peer`` as DRBD runs it: the real executable, every exit path."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from clever_cluster.daemon.control import Caller, ControlError, ControlServer
from clever_cluster.daemon.fence_peer import handler_exit
from clever_cluster.daemon.handler_cli import handler_verb

CLEVERVM = str(Path(sys.executable).with_name("clevervm"))
ENV9 = {"DRBD_RESOURCE": "r0", "DRBD_PEER_NODE_ID": "1", "DRBD_NODE_ID_1": "node2", "DRBD_MINOR": "0"}


@pytest.fixture
def sockdir() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="ccfp"))  # short: AF_UNIX paths are limited to 108 bytes
    yield d
    shutil.rmtree(d, ignore_errors=True)


Reply = Callable[[Mapping[str, Any], Caller], Awaitable[Any]]


@pytest.fixture
async def serve(sockdir: Path) -> AsyncIterator[Callable[[Reply], Awaitable[Path]]]:
    servers: list[ControlServer] = []

    async def start(reply: Reply) -> Path:
        srv = ControlServer(sockdir / "control.sock", {"fence-peer": reply, "unfence-peer": reply})
        await srv.start()
        servers.append(srv)
        return srv.path

    yield start
    for s in servers:
        await s.close()


async def run(sock: Path | None, *extra: str, env: Mapping[str, str] | None = None, verb: str = "fence-peer",
              on_start: Callable[[asyncio.subprocess.Process], Awaitable[None]] | None = None) -> tuple[int, str]:
    argv = [CLEVERVM, *(["--socket", str(sock)] if sock else []), verb, *extra]
    base = {k: v for k, v in os.environ.items() if not k.startswith("DRBD_")}
    proc = await asyncio.create_subprocess_exec(*argv, env={**base, **(ENV9 if env is None else env)},
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    if on_start is not None:
        await on_start(proc)
    _out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, err.decode()


def answer(obj: Any) -> Reply:
    async def reply(args: Mapping[str, Any], caller: Caller) -> Any:
        assert args["env"]["DRBD_RESOURCE"] == "r0" and "PATH" not in args["env"]
        return obj
    return reply


async def test_verdicts_map_to_drbd_codes(serve: Callable[[Reply], Awaitable[Path]], sockdir: Path) -> None:
    sock = await serve(answer({"verdict": "peer_outdated", "reason": "outdated"}))
    assert (await run(sock))[0] == 4


@pytest.mark.parametrize(("reply", "code"), [
    ({"verdict": "peer_fenced", "record": "rec-1", "reason": "off"}, 7),
    ({"verdict": "peer_fenced", "reason": "no record"}, 1),
    ({"verdict": "peer_fenced", "record": ""}, 1),
    ({"verdict": "refused", "reason": "secondary"}, 1),
    ({"verdict": "peer_outdated", "exit": 5}, 4),
    ({"verdict": "something new", "exit": 3}, 1),
    ({"exit": 6}, 1),
    ([4], 1),
    (None, 1),
])
async def test_only_explicit_verdicts_succeed(serve: Callable[[Reply], Awaitable[Path]], reply: Any, code: int) -> None:
    sock = await serve(answer(reply))
    assert (await run(sock))[0] == code


async def test_error_answer_is_1(serve: Callable[[Reply], Awaitable[Path]]) -> None:
    async def refuse(args: Mapping[str, Any], caller: Caller) -> Any:
        raise ControlError("no", "refused")
    assert (await run(await serve(refuse)))[0] == 1


async def test_daemon_bug_is_1(serve: Callable[[Reply], Awaitable[Path]]) -> None:
    async def bug(args: Mapping[str, Any], caller: Caller) -> Any:
        raise RuntimeError("bug")
    assert (await run(await serve(bug)))[0] == 1


async def test_socket_missing_is_1_not_3(sockdir: Path) -> None:
    code, err = await run(sockdir / "nothing.sock")
    assert code == 1 and "daemon not running" in err


async def test_socket_present_but_nobody_listening_is_1(sockdir: Path) -> None:
    import socket
    path = sockdir / "dead.sock"
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(path))
    s.close()  # a daemon killed by SIGKILL leaves its socket file behind
    assert (await run(path))[0] == 1


async def test_eof_while_waiting_is_1(sockdir: Path) -> None:
    got = asyncio.Event()

    async def crash_after_reading(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readline()
        got.set()
        writer.close()  # the daemon dies while the handler waits for its answer

    path = sockdir / "eof.sock"
    srv = await asyncio.start_unix_server(crash_after_reading, path=str(path))
    async with srv:
        code, err = await run(path)
    assert got.is_set() and code == 1 and "closed the connection" in err


async def test_signal_while_waiting_is_1_and_no_short_deadline(serve: Callable[[Reply], Awaitable[Path]]) -> None:
    started = asyncio.Event()

    async def slow(args: Mapping[str, Any], caller: Caller) -> Any:
        started.set()
        await asyncio.sleep(3600)

    sock = await serve(slow)

    async def later(proc: asyncio.subprocess.Process) -> None:
        await asyncio.wait_for(started.wait(), 30)
        await asyncio.sleep(11)  # longer than clevervm's usual 10 s client timeout: the handler still waits
        assert proc.returncode is None
        proc.send_signal(signal.SIGTERM)

    code, err = await run(sock, on_start=later)
    assert code == 1 and "signal" in err


@pytest.mark.parametrize("env", [{}, {"DRBD_RESOURCE": "r0"}, {**ENV9, "DRBD_RESOURCE": ""}])
async def test_bad_environment_is_1_without_asking(env: dict[str, str], sockdir: Path, serve: Callable[[Reply], Awaitable[Path]]) -> None:
    asked = []

    async def reply(args: Mapping[str, Any], caller: Caller) -> Any:
        asked.append(args)
        return {"verdict": "refused"}

    sock = await serve(reply)
    code, _ = await run(sock, env=env)
    assert code == 1
    if not env.get("DRBD_RESOURCE"):
        assert asked == []


async def test_bad_arguments_are_1(serve: Callable[[Reply], Awaitable[Path]]) -> None:
    sock = await serve(answer({"verdict": "peer_outdated"}))
    assert (await run(sock, "--bogus"))[0] == 1
    assert (await run(sock, "extra"))[0] == 1


async def test_unreadable_config_is_1(sockdir: Path) -> None:
    code, _ = await run(None, "--config", str(sockdir / "missing.toml"))
    assert code == 1


async def test_unfence_peer(serve: Callable[[Reply], Awaitable[Path]], sockdir: Path) -> None:
    sock = await serve(answer({"verdict": "unfenced"}))
    assert (await run(sock, verb="unfence-peer"))[0] == 0
    assert (await run(sockdir / "none.sock", verb="unfence-peer"))[0] == 1


def test_handler_verb_detection() -> None:
    assert handler_verb(["--config", "x.toml", "fence-peer"]) == "fence-peer"
    assert handler_verb(["--socket", "fence-peer", "status"]) is None  # the option's value is not the verb
    assert handler_verb(["status"]) is None


@given(reply=st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=12),
                          lambda c: st.lists(c, max_size=3) | st.dictionaries(st.sampled_from(["verdict", "record", "exit", "reason"]) | st.text(max_size=5), c, max_size=4),
                          max_leaves=8),
       verb=st.sampled_from(["fence-peer", "unfence-peer"]))
def test_handler_exit_never_3_5_6(reply: Any, verb: str) -> None:
    code = handler_exit(verb, reply)
    assert code in ((1, 4, 7) if verb == "fence-peer" else (0, 1))
    if code == 7:
        assert isinstance(reply, dict) and reply.get("verdict") == "peer_fenced" and reply.get("record")


async def test_the_socket_is_found_through_the_configuration(lab_configs: tuple[Path, Path]) -> None:
    from clever_cluster.daemon.config import runtime_dir_of
    from clever_cluster.daemon.control import socket_path

    node1, _ = lab_configs
    srv = ControlServer(socket_path(runtime_dir_of(node1)), {"fence-peer": answer({"verdict": "peer_outdated"})})
    await srv.start()
    try:
        code, _ = await run(None, "--config", str(node1))
        assert code == 4
        base = {k: v for k, v in os.environ.items() if not k.startswith("DRBD_")}
        proc = await asyncio.create_subprocess_exec(CLEVERVM, "fence-peer", env={**base, **ENV9, "CLEVER_CLUSTER_CONFIG": str(node1)},
                                                    stderr=asyncio.subprocess.PIPE)
        await proc.communicate()
        assert proc.returncode == 4  # the config named by the environment, as the unit file can set it
    finally:
        await srv.close()
