"""``clever-clusterd``: the daemon's command line.

    clever-clusterd --config FILE          run (under systemd: Type=notify)
    clever-clusterd --check-config FILE    print OK or every problem; exit 0 or 1

Exit codes: 0 clean stop / config OK, 1 runtime failure / config invalid,
2 usage. An operator error never prints a traceback.

``CLEVER_CLUSTERD_MAX_PROTOCOL=N`` (environment) caps the heartbeat protocol
version this daemon reads and sends at N (``MIN_VERSION``..``PROTOCOL_VERSION``):
the daemon then behaves on the wire like the release that spoke only up to N.
It exists to exercise rolling upgrades (docs/protocol.md, "Versions and
rolling upgrades"); leave it unset in production.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Mapping
from pathlib import Path

from . import config as config_mod
from . import logsetup
from .heartbeat import MIN_VERSION, PROTOCOL_VERSION
from .runtime import VERSION, Runtime, install_signal_handlers

DEFAULT_CONFIG = Path("/etc/clever-cluster/clever-cluster.toml")
MAX_PROTOCOL_ENV = "CLEVER_CLUSTERD_MAX_PROTOCOL"


def max_protocol(environ: Mapping[str, str] = os.environ) -> int:
    """The protocol cap from the environment (default: this build's version); ValueError with the reason."""
    raw = environ.get(MAX_PROTOCOL_ENV, "").strip()
    if not raw:
        return PROTOCOL_VERSION
    if not raw.isdigit() or not MIN_VERSION <= int(raw) <= PROTOCOL_VERSION:
        raise ValueError(f"{MAX_PROTOCOL_ENV}={raw!r}: must be a protocol version from {MIN_VERSION} to {PROTOCOL_VERSION}")
    return int(raw)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="clever-clusterd", description="Two-node HA arbiter for VMs on DRBD.")
    p.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help=f"configuration file (default {DEFAULT_CONFIG})")
    p.add_argument("--check-config", type=Path, metavar="FILE", help="validate FILE and exit")
    p.add_argument("--version", action="version", version=f"clever-clusterd {VERSION}")
    return p


def check_config(path: Path) -> int:
    try:
        cfg = config_mod.load(path)
    except config_mod.ConfigError as e:
        print(e.report(), file=sys.stderr)
        return 1
    print(f"{path}: OK (node {cfg.cluster.node}, peer {cfg.cluster.peer}, settings fingerprint {config_mod.safety_fingerprint(cfg)})")
    return 0


async def _amain(config_path: Path, cfg: config_mod.Config, protocol: int) -> int:
    runtime = Runtime(config_path, cfg, max_protocol=protocol)
    shutdown = asyncio.Event()
    install_signal_handlers(runtime, shutdown)
    return await runtime.run(shutdown)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.check_config is not None:
        return check_config(args.check_config)
    try:
        protocol = max_protocol()
    except ValueError as e:
        print(f"clever-clusterd: {e}", file=sys.stderr)
        return 2
    try:
        cfg = config_mod.load(args.config)
    except config_mod.ConfigError as e:
        print(e.report(), file=sys.stderr)
        return 1
    logsetup.setup(cfg.log.level, cfg.log.target)
    try:
        return asyncio.run(_amain(args.config, cfg, protocol))
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(main())
