"""Every error leaves the API as JSON ``{"detail": "<one readable message>"}``."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import InterfaceError, OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.base import BaseHTTPMiddleware, RequestResponseEndpoint
from starlette.responses import Response

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


STATUS_OF = {
    NotFoundError: 404,
    BlobNotFoundError: 404,
    ConflictError: 409,
    ForgetSetError: 422,
    DatasetError: 422,
    ModelError: 422,
    MethodError: 422,
    RunError: 422,
    BlobStoreUnavailableError: 503,
}

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
        return JSONResponse({"detail": _message(list(exc.errors())), "errors": jsonable(exc.errors())}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse({"detail": str(exc.detail)}, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(OperationalError)
    @app.exception_handler(InterfaceError)
    async def _database_down(_: Request, exc: Exception) -> JSONResponse:
        # The driver's message names host, port and user: not for clients. A restart or
        # failover is the usual cause, so say when to come back (the request wrote nothing).
        return JSONResponse(
            {"detail": "the database is unavailable or busy; retry later (with the same Idempotency-Key, a retry is safe)"},
            status_code=503,
            headers={"Retry-After": "5"},
        )

    @app.exception_handler(LetheError)
    async def _lethe(_: Request, exc: LetheError) -> JSONResponse:
        code = next((c for t, c in STATUS_OF.items() if isinstance(exc, t)), 400)
        return JSONResponse({"detail": str(exc)}, status_code=code)


def jsonable(errors: object) -> object:
    from fastapi.encoders import jsonable_encoder

    return jsonable_encoder(errors, custom_encoder={Exception: str})


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
