"""``clevervm console-password [FILE]``: set the web console's password.

Writes the salted scrypt hash (:mod:`.auth`) to FILE, or to
``console.password_file`` of the configuration when FILE is not given, with
mode 0600, atomically (the old file stays whole if anything fails). The
password is asked twice on a terminal; from a pipe, one line is read (for
automation). Running consoles read the file at each login, so the new
password counts at once; existing sessions last until they expire or the
console restarts.
"""

from __future__ import annotations

import argparse
import getpass
import sys
from pathlib import Path

from ..config import ConfigError
from ..persist import atomic_write
from . import auth, settings

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", nargs="?", type=Path, help="where to write the hash (default: console.password_file of the configuration)")


class _Refused(Exception):
    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def _target(args: argparse.Namespace) -> Path:
    if args.file is not None:
        return Path(args.file)
    try:
        st = settings.read(args.config)
    except ConfigError as e:
        raise _Refused(f"{e.report()}\n(or name the file: clevervm console-password FILE)", EXIT_FAILED) from None
    if st.console.password_file is None:
        raise _Refused("console.password_file is not set in the configuration; set it, or name the file: "
                       "clevervm console-password FILE", EXIT_USAGE)
    return st.console.password_file


def _fail(msg: str, code: int) -> int:
    print(f"clevervm: {msg}", file=sys.stderr)
    return code


def _read_password() -> str:
    if sys.stdin.isatty():
        first = getpass.getpass("New console password: ")
        if getpass.getpass("Again: ") != first:
            raise ValueError("the two passwords differ")
        return first
    line = sys.stdin.readline()
    return line[:-1] if line.endswith("\n") else line


def run(args: argparse.Namespace) -> int:
    try:
        target = _target(args)
    except _Refused as e:
        return _fail(str(e), e.code)
    try:
        password = _read_password()
    except (ValueError, EOFError) as e:
        return _fail(str(e) or "no password given", EXIT_FAILED)
    problem = auth.password_problem(password)
    if problem is not None:
        return _fail(f"password refused: {problem}", EXIT_FAILED)
    line = auth.make_hash(password) + "\n"
    try:
        atomic_write(target, line.encode(), mode=0o600)
    except OSError as e:
        return _fail(f"cannot write {target}: {e.strerror or e}", EXIT_FAILED)
    print(f"console password hash written to {target} (mode 0600); the console checks it at the next login")
    return EXIT_OK
