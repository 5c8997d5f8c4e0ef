"""The outermost HTTP middleware: a request id for every request, its latency histogram and
one structured access-log line.

Pure ASGI (not ``BaseHTTPMiddleware``) so the context variable it binds is the one the
routers, handlers and their thread-pool calls inherit.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.observability.context import log_context, new_request_id, valid_request_id
from api.observability.metrics import HTTP_LATENCY

log = logging.getLogger("lethe.http")

HEADER = "X-Request-ID"
UNMATCHED = "<unmatched>"


def route_template(scope: Scope) -> str:
    """The matched route's path template (``/requests/{request_id}/status``), never the raw
    path: raw paths would make one time series per id. Mounts (static files) report their
    prefix."""
    route: Any = scope.get("route")
    path = getattr(route, "path", None)
    if isinstance(path, str) and path:
        return path
    root = scope.get("root_path") or ""
    app_root = scope.get("app_root_path") or ""
    if root and root != app_root:  # inside a Mount: its prefix
        return root[len(app_root):] + "/{path}"
    return UNMATCHED


class RequestContextMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = Headers(scope=scope).get(HEADER)
        request_id = given if valid_request_id(given) else new_request_id()
        status = 500  # what a handler that raised becomes

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
                MutableHeaders(scope=message)[HEADER] = request_id
            await send(message)

        started = time.perf_counter()
        with log_context(request_id=request_id):
            try:
                await self.app(scope, receive, send_with_id)
            finally:
                seconds = time.perf_counter() - started
                route = route_template(scope)
                method = scope.get("method", "")
                HTTP_LATENCY.labels(method=method, route=route, status=str(status)).observe(seconds)
                log.info(
                    "%s %s %s %.1fms", method, scope.get("path", ""), status, seconds * 1000,
                    extra={
                        "http_method": method,
                        "path": scope.get("path", ""),
                        "route": route,
                        "status": status,
                        "duration_ms": round(seconds * 1000, 2),
                        **({"request_id_replaced": given[:64]} if given and given != request_id else {}),
                    },
                )
