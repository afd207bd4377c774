"""``clever-clusterd``: the daemon's command line.

    clever-clusterd --config FILE          run (under systemd: Type=notify)
    clever-clusterd --check-config FILE    print OK or every problem; exit 0 or 1

Exit codes: 0 clean stop / config OK, 1 runtime failure / config invalid,
2 usage. An operator error never prints a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from . import config as config_mod
from . import logsetup
from .runtime import VERSION, Runtime, install_signal_handlers

DEFAULT_CONFIG = Path("/etc/clever-cluster/clever-cluster.toml")


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


async def _amain(config_path: Path, cfg: config_mod.Config) -> int:
    runtime = Runtime(config_path, cfg)
    shutdown = asyncio.Event()
    install_signal_handlers(runtime, shutdown)
    return await runtime.run(shutdown)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.check_config is not None:
        return check_config(args.check_config)
    try:
        cfg = config_mod.load(args.config)
    except config_mod.ConfigError as e:
        print(e.report(), file=sys.stderr)
        return 1
    logsetup.setup(cfg.log.level, cfg.log.target)
    try:
        return asyncio.run(_amain(args.config, cfg))
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(main())
