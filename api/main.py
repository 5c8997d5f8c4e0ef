"""The FastAPI application: routers per domain, JSON errors, body size limit."""

from __future__ import annotations

from fastapi import FastAPI

from api.config import Settings, get_settings
from api.errors import BodySizeLimit, RefuseNulInUrl, ServerErrorAsJson, install_error_handlers

DESCRIPTION = """
Lethe honours GDPR Art. 17 erasure requests against trained neural networks.

Authenticate with an API key: `Authorization: Bearer <key>`. Scopes: `requester` (file and
read your own erasure requests), `registry` (pull models and versions), `admin` (everything,
within the key's tenant). Errors are JSON: `{"detail": "<message>"}`; a server error (5xx) also
carries `"request_id"`, the `X-Request-ID` of the response, to quote when reporting it.
"""


def create_app(settings: Settings | None = None) -> FastAPI:
    from api.audit.views import router as audit_router
    from api.compaction.views import router as compaction_router
    from api.datasets.views import router as datasets_router
    from api.erasure.views import admin_router
    from api.erasure.views import router as erasure_router
    from api.health.views import router as health_router
    from api.purge.views import router as purge_router
    from api.receipts.views import router as receipts_router
    from api.registry.views import router as registry_router
    from api.webhooks.views import router as webhooks_router

    settings = settings or get_settings()
    app = FastAPI(title="Lethe", version="0.1.0", description=DESCRIPTION)
    install_error_handlers(app)
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    for router in (
        health_router, erasure_router, admin_router, registry_router, compaction_router,
        datasets_router, audit_router, receipts_router, purge_router, webhooks_router,
    ):
        app.include_router(router)
    from api.dashboard.views import install as install_dashboard
    from api.observability.middleware import RequestContextMiddleware
    from api.observability.views import router as metrics_router

    app.include_router(metrics_router)
    install_dashboard(app, settings)
    # Just inside the context middleware: an unhandled exception becomes 500 JSON with the
    # request id bound (logged with its traceback) and still gets the X-Request-ID header.
    app.add_middleware(RefuseNulInUrl)  # no stored name or id holds a NUL: 400, not a driver error
    app.add_middleware(ServerErrorAsJson)
    app.add_middleware(RequestContextMiddleware)  # last added = outermost: ids and latency for all
    return app
