"""Logging setup shared by ``lethe serve`` and ``lethe worker``: JSON lines (the default,
for log pipelines) or plain text (``LETHE_LOG_FORMAT=text``, for a developer's terminal).

Every line carries the fields bound in :mod:`api.observability.context`: ``request_id``
always (``null`` outside a request), ``erasure_request_id``, ``job_id`` and ``model`` where
known. They are added by a handler filter, so whatever library logs (uvicorn, Celery,
SQLAlchemy) gets them too.
"""

from __future__ import annotations

import logging
import sys
from datetime import UTC, datetime
from typing import IO, Any

from pythonjsonlogger.core import RESERVED_ATTRS
from pythonjsonlogger.json import JsonFormatter

from api.observability.context import fields

FORMATS = ("json", "text")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"


class ContextFilter(logging.Filter):
    """Copies the bound context fields onto each record (never drops a record)."""

    def filter(self, record: logging.LogRecord) -> bool:
        bound = fields()
        record.request_id = bound.get("request_id")
        for key, value in bound.items():
            if key != "request_id" and not hasattr(record, key):
                setattr(record, key, value)
        return True


class LetheJsonFormatter(JsonFormatter):
    """One JSON object per line: ``time`` (ISO 8601 UTC), ``level``, ``logger``,
    ``message``, ``request_id``, then any bound or ``extra=`` fields."""

    def __init__(self) -> None:
        super().__init__(
            "%(asctime)s %(levelname)s %(name)s %(message)s %(request_id)s",
            rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
            # uvicorn's extra copy of its message with terminal colour codes
            reserved_attrs=[*RESERVED_ATTRS, "color_message"],
            json_ensure_ascii=False,
        )

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:  # noqa: N802
        return datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")


def make_handler(fmt: str = "json", stream: IO[str] | None = None) -> logging.Handler:
    """A stream handler (stderr by default) in ``fmt`` with the context filter."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown log format {fmt!r}: use json or text")
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.addFilter(ContextFilter())
    formatter: logging.Formatter = LetheJsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT)
    handler.setFormatter(formatter)
    return handler


def configure_logging(level: str | int = "INFO", fmt: str = "json", stream: IO[str] | None = None) -> None:
    """Replace the root logger's handlers with one ``fmt`` handler; make uvicorn's loggers
    go through it (they keep their own handlers otherwise)."""
    handler = make_handler(fmt, stream)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level if isinstance(level, int) else level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        lib = logging.getLogger(name)
        lib.handlers.clear()
        lib.propagate = True


def extra(**values: Any) -> dict[str, Any]:
    """``extra=`` for a log call, dropping ``None`` values (they would be JSON nulls)."""
    return {k: v for k, v in values.items() if v is not None}
