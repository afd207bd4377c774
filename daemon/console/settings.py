"""What the console reads from the daemon's configuration file.

Only ``[console]``, ``[log]``, and from ``[cluster]`` the runtime directory
(where the control socket is) and the names. Like ``clevervm``, the console
must keep working while the file on disk has an unrelated mistake that the
running daemon has not loaded, so the other sections are not validated here;
the sections read are validated with the daemon's own schema.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from ..config import ConfigError, ConsoleConfig, LogConfig, read_table, runtime_dir_of
from ..control import socket_path
from ..schema import Problems, load_section, parse_host_port


@dataclasses.dataclass(frozen=True)
class ConsoleSettings:
    config_path: Path
    socket: Path
    console: ConsoleConfig
    log: LogConfig
    cluster: str
    node: str

    @property
    def listen(self) -> tuple[str, int] | None:
        return parse_host_port(self.console.listen) if self.console.listen else None


def read(path: Path | str) -> ConsoleSettings:
    """Raises ConfigError listing every problem of the sections the console uses."""
    path = Path(path)
    table = read_table(path)
    runtime_dir = runtime_dir_of(path)
    problems = Problems()
    sections = {}
    for name, cls in (("console", ConsoleConfig), ("log", LogConfig)):
        raw = table.get(name, {})
        if not isinstance(raw, dict):
            problems.add(name, "must be a table")
            continue
        sections[name] = load_section(cls, raw, name, problems)
    cluster = table.get("cluster", {}) if isinstance(table.get("cluster"), dict) else {}
    if problems:
        raise ConfigError(path, problems.items)
    con: ConsoleConfig = sections["console"]
    if (con.tls_cert is None) != (con.tls_key is None):
        raise ConfigError(path, ["console.tls_key: give both console.tls_cert and console.tls_key, or neither"])
    return ConsoleSettings(path, socket_path(runtime_dir), con, sections["log"],
                           str(cluster.get("name", "")), str(cluster.get("node", "")))
