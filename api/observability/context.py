"""Log context carried by :mod:`contextvars`: the HTTP request id and, in the worker, the
erasure request and job being processed.

A context variable (not a thread-local) because FastAPI runs sync handlers in a thread pool
and async code on the event loop: Starlette copies the context into the pool's thread, so
a value bound by the middleware is seen by the handler, its dependencies and the database
defaults that read it (:attr:`api.erasure.models.ErasureRequest.http_request_id`).
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from types import MappingProxyType
from typing import Any

#: Fields every log line shows when known: the HTTP request id (``request_id``), the erasure
#: request (``erasure_request_id``), the job (``job_id``) and its model.
_FIELDS: ContextVar[Mapping[str, Any]] = ContextVar("lethe_log_fields", default=MappingProxyType({}))

#: What an incoming ``X-Request-ID`` may look like: a proxy's UUID, a trace id, a short
#: token. Anything else (too long, spaces, control characters that could forge log lines)
#: is replaced by a fresh id rather than refused: tracing must never fail a request.
_VALID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")


def valid_request_id(value: str | None) -> bool:
    return value is not None and _VALID.fullmatch(value) is not None


def new_request_id() -> str:
    return uuid.uuid4().hex


def fields() -> Mapping[str, Any]:
    """The log fields bound in the current context."""
    return _FIELDS.get()


def current_request_id() -> str | None:
    """The HTTP request id of the request being served (``None`` outside one)."""
    value = _FIELDS.get().get("request_id")
    return str(value) if value is not None else None


@contextmanager
def log_context(**values: Any) -> Iterator[None]:
    """Bind ``values`` (``None`` values are left out) for the ``with`` block, on top of what
    is bound already; restored on exit."""
    merged = {**_FIELDS.get(), **{k: v for k, v in values.items() if v is not None}}
    token = _FIELDS.set(MappingProxyType(merged))
    try:
        yield
    finally:
        _FIELDS.reset(token)
