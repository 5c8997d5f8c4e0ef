"""``GET /metrics``: the Prometheus text exposition.

Counts of erasure requests are information about the service's users, so ``/metrics``
needs an admin key (``Authorization: Bearer``, as Prometheus' ``authorization`` scrape
setting sends it) unless ``LETHE_METRICS_PUBLIC=true`` opens it, e.g. where only a
private scrape network reaches the port.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, status
from fastapi.responses import Response
from fastapi.security import HTTPAuthorizationCredentials

from api.auth.dependencies import DbDep, bearer, current_principal
from api.config import get_settings
from api.observability.metrics import exposition

router = APIRouter(tags=["observability"])


def metrics_access(
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)], db: DbDep
) -> None:
    if get_settings().metrics_public:
        return
    principal = current_principal(credentials, db)
    if not principal.has("admin"):
        raise HTTPException(
            status.HTTP_403_FORBIDDEN,
            "/metrics needs an admin key (or LETHE_METRICS_PUBLIC=true)",
        )


@router.get(
    "/metrics",
    summary="Prometheus metrics (admin key unless LETHE_METRICS_PUBLIC=true)",
    dependencies=[Depends(metrics_access)],
    response_class=Response,
)
def metrics() -> Response:
    body, content_type = exposition()
    return Response(body, media_type=content_type)
