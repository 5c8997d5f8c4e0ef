"""Every error leaves the API as JSON ``{"detail": "<one readable message>"}``.

A server error (5xx) also names the request id (``"request_id"``, the ``X-Request-ID`` the
request context middleware assigns) so an operator can find its log lines; an exception no
handler knows becomes ``500 {"detail": "internal server error", "request_id": ...}`` with
its traceback logged under that id (:class:`ServerErrorAsJson`), never a plain-text page.
"""

from __future__ import annotations

import logging
import math
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import InterfaceError, OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.base import BaseHTTPMiddleware, RequestResponseEndpoint
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.observability.context import current_request_id
from unlearning_core.errors import (
    BlobNotFoundError,
    BlobStoreUnavailableError,
    DatasetError,
    ForgetSetError,
    LetheError,
    MethodError,
    ModelError,
    RunError,
)


class ConflictError(LetheError):
    """The request conflicts with the current state (idempotency key reuse, bad transition)."""


class NotFoundError(LetheError):
    """The named resource does not exist (or belongs to another tenant)."""


class ForbiddenError(LetheError):
    """The caller may not do this, whatever the resource (a server path outside the
    directories the operator allows)."""


STATUS_OF = {
    NotFoundError: 404,
    BlobNotFoundError: 404,
    ConflictError: 409,
    ForbiddenError: 403,
    ForgetSetError: 422,
    DatasetError: 422,
    ModelError: 422,
    MethodError: 422,
    RunError: 422,
    BlobStoreUnavailableError: 503,
}

log = logging.getLogger("lethe.errors")

#: The body of a 500 for an exception no handler knows: nothing of the exception leaks.
INTERNAL_ERROR = "internal server error"


def json_safe(value: Any) -> Any:
    """``value`` with whatever strict JSON in UTF-8 cannot carry made printable.

    Error bodies echo what the client sent (a validation error's ``input``, a name in a
    message), and JSON decoding admits both a lone surrogate (``"\\ud800"``) and, in
    Python, ``NaN`` / ``Infinity``: neither can be written back out (UTF-8 has no surrogates,
    strict JSON no non-finite numbers), which used to turn a 422 into a plain-text 500.
    Strings keep their text with such characters backslash-escaped; non-finite floats
    become their names (``"nan"``, ``"inf"``); bytes are decoded the same way.
    """
    if isinstance(value, str):
        try:
            value.encode("utf-8")
            return value
        except UnicodeEncodeError:
            return value.encode("utf-8", "backslashreplace").decode("utf-8")
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, bytes | bytearray):
        return bytes(value).decode("utf-8", "backslashreplace")
    if isinstance(value, dict):
        return {json_safe(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [json_safe(v) for v in value]
    return value


class ErrorResponse(JSONResponse):
    """A JSON error body that always renders (see :func:`json_safe`); a 5xx names the
    request id so the client can quote it and an operator can find the log lines."""

    def render(self, content: Any) -> bytes:
        return super().render(json_safe(content))


def error_response(
    detail: str, status_code: int, headers: dict[str, str] | None = None, **extra: Any
) -> ErrorResponse:
    """``{"detail": detail, **extra}``, plus ``"request_id"`` for a 5xx."""
    body: dict[str, Any] = {"detail": detail, **extra}
    if status_code >= 500:
        body["request_id"] = current_request_id()
    return ErrorResponse(body, status_code=status_code, headers=headers)


#: Faults worth retrying later (with backoff) rather than failing a request for: the
#: database or the blob store unreachable, a deadlock or serialization failure (all
#: ``OperationalError`` in SQLAlchemy's mapping of the DBAPI errors).
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    OperationalError,
    InterfaceError,
    BlobStoreUnavailableError,
    ConnectionError,
    TimeoutError,
)


def is_transient(exc: BaseException) -> bool:
    """Whether ``exc`` is a transient fault (see :data:`TRANSIENT_ERRORS`)."""
    return isinstance(exc, TRANSIENT_ERRORS)


def _message(errors: list[dict]) -> str:
    parts = []
    for err in errors[:5]:
        loc = ".".join(str(p) for p in err.get("loc", ()) if p not in ("body",))
        parts.append(f"{loc}: {err.get('msg')}" if loc else str(err.get("msg")))
    return "; ".join(parts) or "invalid request"


def document_error_shape(app: FastAPI) -> None:
    """Make the OpenAPI spec say what a 422 really carries.

    FastAPI documents every 422 as ``{"detail": [ValidationError, ...]}``, but the handler
    below answers ``{"detail": "<message>", "errors": [...]}`` (one readable string, like
    every other error here); a client generated from the spec would fail to parse it.
    """
    generate = app.openapi

    def openapi() -> dict:
        if app.openapi_schema is None:
            schemas = generate().get("components", {}).get("schemas", {})
            if "HTTPValidationError" in schemas:
                schemas["HTTPValidationError"] = {
                    "title": "HTTPValidationError",
                    "type": "object",
                    "required": ["detail"],
                    "properties": {
                        "detail": {"type": "string", "title": "Detail"},
                        "errors": {
                            "type": "array",
                            "title": "Errors",
                            "items": {"$ref": "#/components/schemas/ValidationError"},
                        },
                    },
                }
        return app.openapi_schema  # type: ignore[return-value]

    app.openapi = openapi  # type: ignore[method-assign]


def install_error_handlers(app: FastAPI) -> None:
    document_error_shape(app)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = list(exc.errors())
        return error_response(_message(errors), 422, errors=jsonable(errors))

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return error_response(str(exc.detail), exc.status_code, headers=exc.headers)

    @app.exception_handler(OperationalError)
    @app.exception_handler(InterfaceError)
    async def _database_down(_: Request, exc: Exception) -> JSONResponse:
        # The driver's message names host, port and user: not for clients. A restart or
        # failover is the usual cause, so say when to come back (the request wrote nothing).
        return error_response(
            "the database is unavailable or busy; retry later (with the same Idempotency-Key, a retry is safe)",
            503,
            headers={"Retry-After": "5"},
        )

    @app.exception_handler(LetheError)
    async def _lethe(_: Request, exc: LetheError) -> JSONResponse:
        code = next((c for t, c in STATUS_OF.items() if isinstance(exc, t)), 400)
        return error_response(str(exc), code)


def jsonable(errors: object) -> object:
    from fastapi.encoders import jsonable_encoder

    return json_safe(jsonable_encoder(errors, custom_encoder={Exception: str, bytes: json_safe}))


class RefuseNulInUrl:
    """Answer ``400`` to a URL whose path or query string holds a NUL character (``%00``).

    No name, id or filter value Lethe stores can hold one (PostgreSQL text cannot), so such a
    URL names nothing; passed on, the driver refuses the lookup and the request failed with a
    500 from whichever handler read the value first.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            query = bytes(scope.get("query_string") or b"").lower()
            if "\x00" in scope.get("path", "") or b"%00" in query or b"\x00" in query:
                response = error_response(
                    "the URL holds a NUL character (%00); no name, id or filter value can contain one",
                    400,
                )
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


class ServerErrorAsJson:
    """Turn an exception that no handler knew into ``500`` JSON naming the request id.

    Starlette's own last resort (``ServerErrorMiddleware``) answers ``text/plain`` from
    outside every other middleware, where the request id is already unbound and the
    ``X-Request-ID`` header is not added. This sits just inside
    :class:`api.observability.middleware.RequestContextMiddleware` (see
    :func:`api.main.create_app`): the traceback is logged with the request id bound, the
    answer passes back through the context middleware (header, latency, access log), and the
    client gets ``{"detail": "internal server error", "request_id": "<id>"}``, nothing of the
    exception itself. An exception after the response started (a stream that failed midway)
    is re-raised: the connection is cut, so the client sees a short body, not a forged end.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def send_tracking(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, send_tracking)
        except Exception:
            request_id = current_request_id()
            log.exception(
                "unhandled error in %s %s (request_id=%s)%s",
                scope.get("method", ""),
                scope.get("path", ""),
                request_id,
                "; the response had started, cutting the connection" if started else "",
                extra={"http_method": scope.get("method", ""), "path": scope.get("path", "")},
            )
            if started:
                raise
            response = error_response(INTERNAL_ERROR, 500)
            await response(scope, receive, send)


class BodySizeLimit(BaseHTTPMiddleware):
    """Refuse bodies over ``max_bytes`` with 413 before a handler reads them."""

    def __init__(self, app, max_bytes: int) -> None:  # type: ignore[no-untyped-def]
        super().__init__(app)
        self.max_bytes = max_bytes

    async def dispatch(self, request: Request, call_next: RequestResponseEndpoint) -> Response:
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            return JSONResponse({"detail": f"request body larger than {self.max_bytes} bytes"}, status_code=413)
        if length is None and request.method in ("POST", "PUT", "PATCH"):
            # Chunked: count while reading and stop at the limit. Reading it all first (as
            # ``request.body()`` does) let one client hold an unbounded body in memory.
            chunks: list[bytes] = []
            size = 0
            async for chunk in request.stream():
                size += len(chunk)
                if size > self.max_bytes:
                    return JSONResponse(
                        {"detail": f"request body larger than {self.max_bytes} bytes"}, status_code=413
                    )
                chunks.append(chunk)
            request._body = b"".join(chunks)  # what request.body() caches: replayed downstream
        return await call_next(request)
