"""Logging to journald (native protocol, structured fields) or to stderr.

Structured fields travel in ``extra={"fields": {...}}`` with upper-case keys
(``CLEVER_REASON``, ``CLEVER_PHASE``...). journald receives them as journal
fields; the stderr format appends them as ``KEY=value`` so nothing is lost.

``target="auto"`` uses journald when its socket exists (as under systemd),
otherwise stderr: systemd-python's handler sends silently into the void when
there is no journald, which would hide every message.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

JOURNAL_SOCKET = "/run/systemd/journal/socket"
LOGGER_NAME = "clever_cluster"


class _StderrFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        base = super().format(record)
        fields: dict[str, Any] = getattr(record, "fields", None) or {}
        if fields:
            base += " " + " ".join(f"{k}={v}" for k, v in fields.items())
        return base


class _JournalFieldsHandler(logging.Handler):
    """Wraps systemd's JournalHandler so ``extra={'fields': {...}}`` become journal fields."""

    def __init__(self, identifier: str) -> None:
        super().__init__()
        from systemd import journal

        self._journal = journal
        self._identifier = identifier

    def emit(self, record: logging.LogRecord) -> None:
        try:
            msg = self.format(record)
            fields: dict[str, Any] = dict(getattr(record, "fields", None) or {})
            if record.exc_info and record.exc_text is None:
                record.exc_text = logging.Formatter().formatException(record.exc_info)
            if record.exc_text:
                msg = msg + "\n" + record.exc_text
            self._journal.send(
                msg,
                PRIORITY=_priority(record.levelno),
                SYSLOG_IDENTIFIER=self._identifier,
                LOGGER=record.name,
                CODE_FILE=record.pathname,
                CODE_LINE=record.lineno,
                CODE_FUNC=record.funcName,
                **{k: str(v) for k, v in fields.items()},
            )
        except Exception:  # noqa: BLE001 - logging must never take the daemon down
            self.handleError(record)


def _priority(levelno: int) -> int:
    if levelno >= logging.CRITICAL:
        return 2
    if levelno >= logging.ERROR:
        return 3
    if levelno >= logging.WARNING:
        return 4
    if levelno >= logging.INFO:
        return 6
    return 7


def journald_available() -> bool:
    return os.path.exists(JOURNAL_SOCKET)


def setup(level: str = "info", target: str = "auto", identifier: str = "clever-clusterd") -> str:
    """Configure the project logger; returns the target actually used."""
    logger = logging.getLogger(LOGGER_NAME)
    for h in list(logger.handlers):
        logger.removeHandler(h)
    use_journal = target == "journal" or (target == "auto" and journald_available())
    handler: logging.Handler
    if use_journal:
        handler = _JournalFieldsHandler(identifier)
        handler.setFormatter(logging.Formatter("%(message)s"))
        used = "journal"
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(_StderrFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        used = "stderr"
    logger.addHandler(handler)
    logger.setLevel(level.upper())
    logger.propagate = False
    return used


def get(name: str) -> logging.Logger:
    """A child of the project logger: ``get("daemon.main")``."""
    return logging.getLogger(f"{LOGGER_NAME}.{name}")
