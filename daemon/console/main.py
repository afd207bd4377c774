"""``clever-cluster-console``: the web console's process.

    clever-cluster-console [--config FILE] [--listen HOST:PORT]

Reads ``[console]`` of the daemon's configuration (``console.listen``; empty
means the console is off and the command exits 0 saying so), checks the
password file and the TLS files before it listens, then serves until SIGTERM
or SIGINT. Exit codes: 0 clean stop or console off, 1 configuration or
start-up problem (one clear message, never a traceback), 2 usage.
Under systemd (``Type=notify``) READY is sent once it listens.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import ssl
import sys
from pathlib import Path

from .. import logsetup
from ..config import ConfigError
from ..notify import Notifier
from ..schema import parse_host_port
from . import auth, settings
from .app import AppConfig, ConsoleApp
from .daemonlink import DaemonLink, Feed
from .http import HttpServer

DEFAULT_CONFIG = Path(os.environ.get("CLEVER_CLUSTER_CONFIG", "/etc/clever-cluster/clever-cluster.toml"))

log = logsetup.get("console.main")


class StartProblem(Exception):
    pass


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="clever-cluster-console", description="Web console of clever-cluster (reads the local daemon over its control socket).")
    p.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help=f"the daemon's configuration file (default {DEFAULT_CONFIG})")
    p.add_argument("--listen", metavar="HOST:PORT", help="override console.listen")
    p.add_argument("--interval", type=float, default=1.0, help="seconds between two status requests to the daemon (default 1)")
    return p


def tls_context(cert: Path, key: Path) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(str(cert), str(key))
    except (OSError, ssl.SSLError) as e:
        raise StartProblem(f"console.tls_cert/tls_key: cannot load {cert} with {key}: {e}") from None
    return ctx


async def serve(st: settings.ConsoleSettings, host: str, port: int, interval: float, stop: asyncio.Event) -> None:
    con = st.console
    ssl_ctx = tls_context(con.tls_cert, con.tls_key) if con.tls_cert is not None and con.tls_key is not None else None
    if con.password_file is not None:
        try:
            auth.read_password_file(con.password_file)
        except auth.PasswordFileError as e:
            raise StartProblem(f"console.password_file: {e}") from None
    link = DaemonLink(st.socket)
    feed = Feed(link, interval=interval)
    app = ConsoleApp(AppConfig(con.password_file, ssl_ctx is not None, con.allowed_hosts), link, feed)
    server = HttpServer(app.handle, host, port, ssl_context=ssl_ctx, extra_headers=app.security_headers)
    try:
        await server.start()
    except OSError as e:
        raise StartProblem(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    feed_task = asyncio.create_task(feed.run(), name="feed")
    bound = server.address
    scheme = "https" if ssl_ctx else "http"
    mode = "read-only (no console.password_file)" if app.read_only else "actions after login"
    log.info("clever-cluster-console listening on %s://%s:%d, %s; daemon socket %s", scheme, *bound, mode, st.socket)
    notifier = Notifier()
    notifier.ready(f"listening on {scheme}://{bound[0]}:{bound[1]}")
    try:
        await stop.wait()
    finally:
        notifier.stopping()
        feed_task.cancel()
        await server.close()
        log.info("clever-cluster-console stopped")


def main(argv: list[str] | None = None) -> int:
    try:
        args = _parser().parse_args(argv)
    except SystemExit as e:
        return 2 if e.code else 0
    try:
        st = settings.read(args.config)
        listen = parse_host_port(args.listen) if args.listen else st.listen
    except ConfigError as e:
        print(e.report(), file=sys.stderr)
        return 1
    except ValueError as e:
        print(f"clever-cluster-console: --listen: {e}", file=sys.stderr)
        return 2
    if listen is None:
        print(f"clever-cluster-console: console.listen is empty in {args.config}: the console is off", file=sys.stderr)
        return 0
    logsetup.setup(st.log.level, st.log.target, identifier="clever-cluster-console")

    async def amain() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await serve(st, listen[0], listen[1], max(0.1, args.interval), stop)

    try:
        asyncio.run(amain())
    except StartProblem as e:
        print(f"clever-cluster-console: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
