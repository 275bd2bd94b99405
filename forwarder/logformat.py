"""How `forwarder` logs: ``text`` (``TIME LOGGER LEVEL MESSAGE``, the default)
or ``json`` (`forwarder run --log-format json`): one JSON object a line,

    {"time": "2025-01-31T12:00:00.123Z", "level": "INFO", "logger": "forwarder",
     "thread": "MainThread", "message": "router r1 running (pid 7, socket ...)"}

with ``exception`` (the traceback's text) when the record carries one,
``stack`` for ``stack_info``, and any fields given with ``extra=``.  ``time``
is RFC 3339 in UTC, to the millisecond.  In JSON, Python's warnings and
uncaught exceptions (main thread and others) are logged too, so that every
line on stderr is an object.
"""
from __future__ import annotations

import json
import logging
import sys
import threading
from datetime import datetime, timezone
from types import TracebackType
from typing import Any

FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(name)s %(levelname)s %(message)s"

# The attributes every LogRecord has: anything else came with extra=.
_RECORD_ATTRS = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime"}

log = logging.getLogger("forwarder")


def rfc3339(t: float) -> str:
    """A POSIX time as RFC 3339, UTC, milliseconds: 2025-01-31T12:00:00.123Z."""
    return datetime.fromtimestamp(t, timezone.utc).isoformat(timespec="milliseconds")[:-6] + "Z"


class JsonFormatter(logging.Formatter):
    """A record as one line of JSON (see the module's docstring)."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {"time": rfc3339(record.created), "level": record.levelname,
                               "logger": record.name, "thread": record.threadName,
                               "message": record.getMessage()}
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            out["exception"] = record.exc_text
        if record.stack_info:
            out["stack"] = self.formatStack(record.stack_info)
        for key, value in vars(record).items():
            if key not in _RECORD_ATTRS and key not in out:
                out[key] = value
        return json.dumps(out, default=str, ensure_ascii=False)


def json_line(logger: str, message: str, level: int = logging.INFO, **fields: Any) -> str:
    """One record formatted as JSON whatever the log level (for output that
    must appear, such as `forwarder run`'s final statistics)."""
    record = logging.makeLogRecord({"name": logger, "msg": message, "levelno": level,
                                    "levelname": logging.getLevelName(level), **fields})
    return JsonFormatter().format(record)


def _log_uncaught(kind: type[BaseException], value: BaseException,
                  tb: TracebackType | None, thread: str | None = None) -> None:
    where = f" in thread {thread}" if thread else ""
    log.critical("uncaught %s%s: %s", kind.__name__, where, value, exc_info=(kind, value, tb))


def _thread_hook(args: threading.ExceptHookArgs) -> None:
    if args.exc_type is SystemExit:
        return
    _log_uncaught(args.exc_type, args.exc_value or args.exc_type(), args.exc_traceback,
                  args.thread.name if args.thread else None)


def configure(level: int, fmt: str = "text") -> None:
    """The root logger: ``level``, to stderr, in format ``fmt`` (one of FORMATS)."""
    if fmt not in FORMATS:
        raise ValueError(f"log format {fmt!r}: expected one of {', '.join(FORMATS)}")
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    logging.basicConfig(level=level, handlers=[handler])
    if fmt == "json":
        logging.captureWarnings(True)
        sys.excepthook = _log_uncaught
        threading.excepthook = _thread_hook
