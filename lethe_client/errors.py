"""The exceptions of the Lethe client.

Every error the client raises is a :class:`LetheError`. An error the server answered carries
its HTTP ``status_code`` and the server's ``detail`` message (``{"detail": "..."}``, the
shape of every Lethe error); an error found on this side (a connection that failed after
its retries, a wait that ran out of time, weights whose sha256 does not match) has
``status_code`` ``None``.

================================  =========================================================
server answer                     exception
================================  =========================================================
401                               :class:`Unauthorized`
403                               :class:`Forbidden`
404                               :class:`NotFound`
409                               :class:`Conflict`
410                               :class:`Gone` (``successor``: the version to use instead)
413                               :class:`PayloadTooLarge`
422                               :class:`ValidationFailed` (``errors``: the field errors)
5xx                               :class:`ServerError` (503: :class:`ServiceUnavailable`)
other 4xx                         :class:`LetheError`
================================  =========================================================
"""

from __future__ import annotations

from typing import Any


class LetheError(Exception):
    """Base of every client error: ``status_code`` (``None`` when no server answered) and
    ``detail`` (the server's message, or the client's)."""

    def __init__(
        self,
        detail: str,
        *,
        status_code: int | None = None,
        method: str | None = None,
        url: str | None = None,
        body: Any = None,
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        self.status_code = status_code
        self.method = method
        self.url = url
        #: the parsed JSON body of the error answer (``None`` if none or not JSON)
        self.body = body

    def __str__(self) -> str:
        if self.status_code is None:
            return self.detail
        return f"{self.status_code} {self.detail}"

    def __repr__(self) -> str:
        return f"{type(self).__name__}(status_code={self.status_code!r}, detail={self.detail!r})"


class Unauthorized(LetheError):
    """401: no API key, or an unknown or revoked one (``LETHE_API_KEY``)."""


class Forbidden(LetheError):
    """403: the key lacks the scope the call needs (requester, registry, admin)."""


class NotFound(LetheError):
    """404: no such request, model, version or report (or another tenant's)."""


class Conflict(LetheError):
    """409: an Idempotency-Key reused with another body, a model not ready, a state that
    does not allow the action."""


class Gone(LetheError):
    """410: the version was withdrawn (a newer one answers erasure requests whose data it
    held). ``successor`` is the version number to use instead, ``successor_url`` its
    address (from the ``Link: <...>; rel="successor-version"`` header)."""

    def __init__(
        self, detail: str, *, successor: int | None = None, successor_url: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(detail, **kwargs)
        self.successor = successor
        self.successor_url = successor_url


class PayloadTooLarge(LetheError):
    """413: the body is larger than the server's ``LETHE_MAX_BODY_BYTES``."""


class ValidationFailed(LetheError):
    """422: the server refused the input; ``errors`` lists the field errors it named (may
    be empty: some 422s name the problem in ``detail`` only)."""

    def __init__(self, detail: str, *, errors: list[dict[str, Any]] | None = None, **kwargs: Any) -> None:
        super().__init__(detail, **kwargs)
        self.errors = errors or []


class ServerError(LetheError):
    """5xx: the server failed; ``request_id`` is the id its logs carry."""

    def __init__(self, detail: str, *, request_id: str | None = None, **kwargs: Any) -> None:
        super().__init__(detail, **kwargs)
        self.request_id = request_id


class ServiceUnavailable(ServerError):
    """503 (after the client's retries): the database, the blob store or the receipt key is
    unavailable."""


class ConnectionFailed(LetheError):
    """No answer: the connection failed or timed out (after the client's retries)."""


class IntegrityError(LetheError):
    """Downloaded bytes whose sha256 is not the one the server recorded for them."""


class ReceiptInvalid(LetheError):
    """A receipt that fails offline verification (another key, a changed byte, not a
    receipt): ``detail`` names the problem."""


class RequestFailed(LetheError):
    """:meth:`Client.wait` saw the request end without the asked tier: ``failed``,
    ``denied`` or ``cancelled``. ``status`` is the request's last status."""

    def __init__(self, detail: str, *, status: Any, **kwargs: Any) -> None:  # a models.RequestStatus
        super().__init__(detail, **kwargs)
        self.status = status


class WaitTimeout(LetheError):
    """:meth:`Client.wait` ran out of time; ``status`` is the last status seen."""

    def __init__(self, detail: str, *, status: Any, **kwargs: Any) -> None:  # models.RequestStatus or None
        super().__init__(detail, **kwargs)
        self.status = status


#: The exception of each HTTP status the server answers.
ERROR_OF_STATUS: dict[int, type[LetheError]] = {
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
    410: Gone,
    413: PayloadTooLarge,
    422: ValidationFailed,
    503: ServiceUnavailable,
}

__all__ = [
    "ERROR_OF_STATUS",
    "Conflict",
    "ConnectionFailed",
    "Forbidden",
    "Gone",
    "IntegrityError",
    "LetheError",
    "NotFound",
    "PayloadTooLarge",
    "ReceiptInvalid",
    "RequestFailed",
    "ServerError",
    "ServiceUnavailable",
    "Unauthorized",
    "ValidationFailed",
    "WaitTimeout",
]
