"""HTTP endpoints of webhooks (scope ``admin``, the key's own tenant; another tenant's
webhook is a 404). The work is in :mod:`api.webhooks.service`."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query, Response, status

from api.auth.dependencies import AdminDep, DbDep
from api.jobs.states import JobState
from api.webhooks import service
from api.webhooks.models import Webhook, WebhookDelivery
from api.webhooks.schemas import (
    DeliveryOut,
    DeliveryPage,
    WebhookCreate,
    WebhookCreated,
    WebhookOut,
)

router = APIRouter(prefix="/webhooks", tags=["webhooks"])

ERRORS = {
    401: {"description": "missing or invalid API key"},
    403: {"description": "the key lacks the admin scope"},
    404: {"description": "no such webhook (or another tenant's, or deleted)"},
}

WebhookId = Annotated[int, Path(description="webhook id", ge=1, le=2**31 - 1)]


def own_webhook(webhook_id: WebhookId, principal: AdminDep, db: DbDep) -> Webhook:
    return service.get(db=db, principal=principal, webhook_id=webhook_id)


OwnWebhook = Annotated[Webhook, Depends(own_webhook)]


def webhook_out(webhook: Webhook) -> WebhookOut:
    return WebhookOut(
        id=webhook.id, url=webhook.url, events=list(webhook.events or []),
        active=webhook.active, created_at=webhook.created_at,
    )


def delivery_out(row: WebhookDelivery) -> DeliveryOut:
    return DeliveryOut.model_validate(row, from_attributes=True)


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=WebhookCreated,
    summary="Register an endpoint for the tenant's events (the secret is shown only now)",
    responses={**ERRORS, 422: {"description": "a URL that is not http(s), has no host or carries credentials; an unknown event"}},
)
def create_webhook(body: WebhookCreate, principal: AdminDep, db: DbDep) -> WebhookCreated:
    """Every delivery to `url` is a JSON POST signed with the returned `secret`
    (`Lethe-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">`)."""
    webhook = service.register(db=db, principal=principal, body=body)
    return WebhookCreated(**webhook_out(webhook).model_dump(), secret=webhook.secret)


@router.get("", response_model=list[WebhookOut], summary="The tenant's webhooks (no secrets)")
def list_webhooks(principal: AdminDep, db: DbDep) -> list[WebhookOut]:
    return [webhook_out(w) for w in service.get_all(db=db, principal=principal)]


@router.delete(
    "/{webhook_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    summary="Delete a webhook (its queued deliveries are cancelled)",
    responses=ERRORS,
)
def delete_webhook(webhook_id: WebhookId, principal: AdminDep, db: DbDep) -> Response:
    service.delete(db=db, principal=principal, webhook_id=webhook_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get(
    "/{webhook_id}/deliveries",
    response_model=DeliveryPage,
    summary="The webhook's deliveries, newest first: status, attempts, next attempt, last answer",
    responses=ERRORS,
)
def list_deliveries(
    webhook: OwnWebhook,
    db: DbDep,
    status_: Annotated[list[JobState] | None, Query(alias="status", description="repeatable")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0, le=1_000_000_000)] = 0,
) -> DeliveryPage:
    items, total = service.deliveries(
        db=db, webhook=webhook, status=[s.value for s in status_] if status_ else None,
        limit=limit, offset=offset,
    )
    return DeliveryPage(items=[delivery_out(r) for r in items], total=total, limit=limit, offset=offset)
