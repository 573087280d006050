"""Structured logs: rich on a terminal, one JSON object per line otherwise.

An exception in a record is one ``Type: message`` at the end of its line; its
traceback is shown only in debug mode (``dimsebus --debug`` or ``DIMSEBUS_DEBUG=1``).
"""

from __future__ import annotations

import json
import logging
import os
import sys
from typing import Any

from rich.logging import RichHandler

_STANDARD = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}
_TRUE = {"1", "true", "yes", "on"}
_debug = False


def set_debug(on: bool) -> None:
    """Show tracebacks (``--debug``); the ``DIMSEBUS_DEBUG`` variable also turns them on."""
    global _debug
    _debug = on


def debugging() -> bool:
    """Whether tracebacks are shown: ``--debug`` was given or ``DIMSEBUS_DEBUG`` is true."""
    return _debug or os.environ.get("DIMSEBUS_DEBUG", "").strip().lower() in _TRUE


def describe(exc: BaseException) -> str:
    """An exception as one line: its type and its message."""
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class OneLineErrors(logging.Filter):
    """Outside debug mode, a record's exception is ``: Type: message`` after its message."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and record.exc_info[1] is not None and not debugging():
            record.msg = f"{record.getMessage()}: {describe(record.exc_info[1])}"
            record.args = None
            record.exc_info = record.exc_text = record.stack_info = None
        return True


class JsonFormatter(logging.Formatter):
    """Formats a record as JSON: time, level, logger, message, and any ``extra`` fields."""

    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S%z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        payload.update({k: v for k, v in record.__dict__.items() if k not in _STANDARD})
        if record.exc_info:
            payload["exception"] = self.formatException(record.exc_info)
        return json.dumps(payload, default=str)


def configure_logging(level: str = "INFO", *, json_logs: bool | None = None) -> None:
    """Send logs to stderr: JSON lines unless stderr is a terminal (or ``json_logs`` says)."""
    as_json = not sys.stderr.isatty() if json_logs is None else json_logs
    handler: logging.Handler
    if as_json:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(JsonFormatter())
    else:
        handler = RichHandler(show_path=False, rich_tracebacks=True)
    handler.addFilter(OneLineErrors())
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)
    logging.getLogger("aiormq").setLevel(logging.WARNING)
    logging.getLogger("aio_pika").setLevel(logging.WARNING)
