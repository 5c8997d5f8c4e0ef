"""Webhooks of a tenant: registering, listing, deleting, and emitting events.

:func:`emit` is what other domains call, in their own transaction: one
:class:`~api.webhooks.models.WebhookDelivery` row per active webhook of the tenant that
takes the event kind, committed with the change it announces (so an event is never lost
and never announced for a rolled-back change), and the workers woken once it commits. The
delivery itself is :mod:`api.webhooks.flows`.

Payloads carry ids only (model names, version numbers, request ids, deadlines): never a
subject id, a sample id or a tenant. Version events go to the model's tenant, request
events to the request's.

This module imports models only (no flows): the erasure, compaction and registry domains
import it.
"""

from __future__ import annotations

import logging
import secrets
import uuid
from collections.abc import Iterable
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from api import wake
from api.audit.service import append as audit
from api.auth.dependencies import Principal
from api.database.core import utcnow
from api.erasure.models import ErasureRequest, RequestJob
from api.errors import NotFoundError
from api.jobs.states import JobState
from api.registry.models import Model
from api.webhooks.models import Webhook, WebhookDelivery
from api.webhooks.schemas import ALL_EVENTS, EventKind, WebhookCreate

log = logging.getLogger("lethe.webhooks")

#: Prefix of a webhook's signing secret (tells it apart from an API key).
SECRET_PREFIX = "whsec_"


def new_secret() -> str:
    return SECRET_PREFIX + secrets.token_urlsafe(32)


# ---------------------------------------------------------------------------------------
# Registering (admin, own tenant)
# ---------------------------------------------------------------------------------------


def register(*, db: Session, principal: Principal, body: WebhookCreate) -> Webhook:
    """A new webhook of the principal's tenant with a fresh secret (commits); audited
    ``webhook.registered`` (its id, host and events, not its secret)."""
    events = [e.value for e in body.events] if body.events else list(ALL_EVENTS)
    webhook = Webhook(
        tenant=principal.tenant,
        url=body.url,
        secret=new_secret(),
        events=sorted(set(events), key=ALL_EVENTS.index),
        active=True,
        created_at=utcnow(),
    )
    db.add(webhook)
    db.flush()
    audit(
        db, "webhook.registered", actor=principal.name, tenant=principal.tenant,
        payload={"webhook_id": webhook.id, "events": webhook.events, "tenant": principal.tenant},
    )
    db.commit()
    return webhook


def get_all(*, db: Session, principal: Principal) -> list[Webhook]:
    return list(
        db.scalars(
            select(Webhook)
            .where(Webhook.tenant == principal.tenant, Webhook.active.is_(True))
            .order_by(Webhook.id)
        )
    )


def get(*, db: Session, principal: Principal, webhook_id: int) -> Webhook:
    """The tenant's active webhook ``webhook_id``; :class:`NotFoundError` for another
    tenant's, a deleted or an unknown one alike."""
    webhook = db.get(Webhook, webhook_id)
    if webhook is None or webhook.tenant != principal.tenant or not webhook.active:
        raise NotFoundError(f"no webhook {webhook_id}")
    return webhook


def delete(*, db: Session, principal: Principal, webhook_id: int) -> None:
    """Deactivate the webhook, forget its secret and cancel what it still had queued
    (commits); audited ``webhook.deleted``. Its deliveries stay on record."""
    webhook = get(db=db, principal=principal, webhook_id=webhook_id)
    now = utcnow()
    webhook.active, webhook.deleted_at, webhook.secret = False, now, ""
    cancelled = db.execute(
        update(WebhookDelivery)
        .where(WebhookDelivery.webhook_id == webhook.id, WebhookDelivery.status == JobState.QUEUED)
        .values(status=JobState.CANCELLED, finished_at=now, error="the webhook was deleted")
        .execution_options(synchronize_session=False)
    ).rowcount  # type: ignore[attr-defined]
    audit(
        db, "webhook.deleted", actor=principal.name, tenant=principal.tenant,
        payload={"webhook_id": webhook.id, "cancelled_deliveries": int(cancelled or 0)},
    )
    db.commit()


def deliveries(
    *, db: Session, webhook: Webhook, status: list[str] | None, limit: int, offset: int
) -> tuple[list[WebhookDelivery], int]:
    """The webhook's deliveries, newest first, and how many match."""
    where = [WebhookDelivery.webhook_id == webhook.id]
    if status:
        where.append(WebhookDelivery.status.in_(status))
    total = db.scalar(select(func.count(WebhookDelivery.id)).where(*where)) or 0
    rows = db.scalars(
        select(WebhookDelivery).where(*where).order_by(WebhookDelivery.id.desc())
        .limit(limit).offset(offset)
    )
    return list(rows), int(total)


# ---------------------------------------------------------------------------------------
# Emitting (other domains, in their transaction)
# ---------------------------------------------------------------------------------------


def emit(db: Session, *, tenant: str, kind: EventKind | str, payload: dict[str, Any]) -> list[int]:
    """Queue event ``kind`` (one new event id) for every active webhook of ``tenant`` that
    takes it, in the caller's transaction; the workers are woken after it commits. The
    delivery ids (none when the tenant has no such webhook)."""
    kind = EventKind(kind).value
    hooks = [
        w
        for w in db.scalars(
            select(Webhook).where(Webhook.tenant == tenant, Webhook.active.is_(True)).order_by(Webhook.id)
        )
        if kind in (w.events or ALL_EVENTS)
    ]
    if not hooks:
        return []
    event_id, now = str(uuid.uuid4()), utcnow()
    rows = [
        WebhookDelivery(
            webhook_id=w.id, event_id=event_id, event=kind, payload=dict(payload),
            status=JobState.QUEUED, attempts=0, next_attempt_at=now, created_at=now,
        )
        for w in hooks
    ]
    db.add_all(rows)
    db.flush()
    ids = [r.id for r in rows]
    wake.after_commit(db, wake.DELIVER_WEBHOOK, ids)
    return ids


def emit_exact(db: Session, *, request_ids: Iterable[str]) -> list[int]:
    """``request.exact`` for each of these requests whose jobs are all exact now
    (``{request_id, models}``), to its tenant."""
    ids: list[int] = []
    for request_id in sorted(set(request_ids)):
        jobs = db.execute(
            select(RequestJob.exact_at, Model.name)
            .join(Model, Model.id == RequestJob.model_id)
            .where(RequestJob.request_id == request_id, RequestJob.status != JobState.CANCELLED)
            .order_by(RequestJob.id)
        ).all()
        if not jobs or any(exact_at is None for exact_at, _ in jobs):
            continue
        request = db.get(ErasureRequest, request_id)
        if request is None:
            continue
        models = list(dict.fromkeys(name for _, name in jobs))
        ids += emit(
            db, tenant=request.tenant, kind=EventKind.REQUEST_EXACT,
            payload={"request_id": request_id, "models": models},
        )
    return ids
