"""HTTP endpoints of the erasure domain: filing and following requests (``router``, scope
``requester``) and administering them (``admin_router``, scope ``admin``, tenant-scoped).

Handlers are thin: permissions and "does this request exist for you" are dependencies,
the work is in :mod:`api.erasure.service`.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Body, Depends, Header, HTTPException, Path, Query, Response, status

from api.auth.dependencies import AdminDep, DbDep, RequesterDep
from api.erasure import service
from api.erasure.models import ErasureRequest
from api.erasure.schemas import (
    ActionBody,
    AuditEventOut,
    ErasureRequestAccepted,
    ErasureRequestCreate,
    RequestPage,
    RequestStats,
    RequestStatusOut,
)
from api.erasure.states import RequestStatus

router = APIRouter(tags=["erasure requests"])
admin_router = APIRouter(prefix="/admin", tags=["admin"])

ERRORS = {
    401: {"description": "missing or invalid API key"},
    403: {"description": "the key lacks the scope"},
    404: {"description": "no such request (or another tenant's)"},
}

RequestId = Annotated[str, Path(description="erasure request id", max_length=64)]


def requester_request(request_id: RequestId, principal: RequesterDep, db: DbDep) -> ErasureRequest:
    """The request named in the path, if it is the caller's tenant's (else 404)."""
    return service.get(db=db, request_id=request_id, principal=principal)


def admin_request(request_id: RequestId, principal: AdminDep, db: DbDep) -> ErasureRequest:
    return service.get(db=db, request_id=request_id, principal=principal)


OwnRequest = Annotated[ErasureRequest, Depends(requester_request)]
AdminRequest = Annotated[ErasureRequest, Depends(admin_request)]


#: Paging offsets beyond this are refused (PostgreSQL's OFFSET is a bigint; no tenant has
#: anywhere near this many requests).
MAX_OFFSET = 1_000_000_000


def _utc(name: str, value: datetime | None) -> datetime | None:
    """A filter time in UTC (naive means UTC); a 422 naming the parameter when the offset
    moves it out of the calendar (``0001-01-01T00:00+14:00``)."""
    if value is None:
        return None
    try:
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    except OverflowError:
        raise HTTPException(422, f"{name}: {value.isoformat()} is out of range in UTC") from None


def status_url(request_id: str) -> str:
    return f"/requests/{request_id}/status"


@router.post(
    "/erasure-requests",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=ErasureRequestAccepted,
    summary="File an erasure request (GDPR Art. 17)",
    responses={
        **ERRORS,
        404: {"description": "an unknown model in `models`"},
        409: {
            "description": "Idempotency-Key reused with another body, or a target model not ready"
        },
        413: {"description": "body too large"},
        422: {
            "description": "invalid body, unknown subject / sample ids, method unusable for a model"
        },
    },
)
def create_request(
    body: ErasureRequestCreate,
    principal: RequesterDep,
    db: DbDep,
    response: Response,
    idempotency_key: Annotated[
        str | None,
        Header(
            alias="Idempotency-Key",
            min_length=1,
            max_length=256,
            description="same key + same body returns the same request; same key + another body is a 409",
        ),
    ] = None,
) -> ErasureRequestAccepted:
    """Validates the body against the datasets and models, stores the request with its due date
    (received + `LETHE_ERASURE_DUE_DAYS`), one job per target model, and returns at once; a worker
    does the unlearning. Follow `status_url`."""
    request, created = service.create(
        db=db, principal=principal, body=body, idempotency_key=idempotency_key
    )
    if not created:
        response.headers["Idempotent-Replayed"] = "true"
    return ErasureRequestAccepted(
        id=request.id,
        status=RequestStatus(request.status),
        status_url=status_url(request.id),
        due_at=request.due_at,
    )


@router.get(
    "/requests/{request_id}/status",
    response_model=RequestStatusOut,
    summary="A request's state, per-model progress and resulting versions with metrics",
    responses=ERRORS,
)
def request_status(request: OwnRequest, db: DbDep) -> RequestStatusOut:
    return service.status_of(db=db, request=request)


# ---------------------------------------------------------------------------------------
# Admin
# ---------------------------------------------------------------------------------------


@admin_router.get(
    "/requests", response_model=RequestPage, summary="List and filter the tenant's requests"
)
def list_requests(
    principal: AdminDep,
    db: DbDep,
    status_: Annotated[
        list[RequestStatus] | None, Query(alias="status", description="repeatable")
    ] = None,
    subject_id: Annotated[str | None, Query(max_length=256)] = None,
    model: Annotated[
        str | None, Query(max_length=128, description="requests with a job on this model")
    ] = None,
    received_from: Annotated[
        datetime | None, Query(description="received at or after (ISO 8601; UTC if naive)")
    ] = None,
    received_to: Annotated[datetime | None, Query(description="received before")] = None,
    overdue: Annotated[bool | None, Query(description="not final and past due_at")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
) -> RequestPage:
    filters = service.RequestFilter(
        status=status_,
        subject_id=subject_id,
        model=model,
        received_from=_utc("received_from", received_from),
        received_to=_utc("received_to", received_to),
        overdue=overdue,
    )
    items, total = service.get_all(
        db=db, principal=principal, filters=filters, limit=limit, offset=offset
    )
    return RequestPage(items=items, total=total, limit=limit, offset=offset)


@admin_router.get(
    "/requests/stats",
    response_model=RequestStats,
    summary="Counts by status, overdue count, mean time to complete",
)
def request_stats(principal: AdminDep, db: DbDep) -> RequestStats:
    return service.stats(db=db, principal=principal)


@admin_router.get(
    "/requests/{request_id}",
    response_model=RequestStatusOut,
    summary="One request",
    responses=ERRORS,
)
def admin_get_request(request: AdminRequest, db: DbDep) -> RequestStatusOut:
    return service.status_of(db=db, request=request)


@admin_router.get(
    "/requests/{request_id}/audit",
    response_model=list[AuditEventOut],
    summary="The request's audit events, in chain order",
    responses=ERRORS,
)
def request_audit(request: AdminRequest, db: DbDep) -> list[AuditEventOut]:
    return [
        AuditEventOut.model_validate(e, from_attributes=True)
        for e in service.audit_events(db=db, request=request)
    ]


ACTION_RESPONSES = {**ERRORS, 409: {"description": "the request's state does not allow the action"}}
ActionBodyDep = Annotated[ActionBody | None, Body()]


@admin_router.post(
    "/requests/{request_id}/approve",
    response_model=RequestStatusOut,
    responses=ACTION_RESPONSES,
    summary="awaiting_approval -> queued",
)
def approve(
    request_id: RequestId, principal: AdminDep, db: DbDep, body: ActionBodyDep = None
) -> RequestStatusOut:
    request = service.approve(
        db=db, request_id=request_id, principal=principal, reason=body.reason if body else None
    )
    return service.status_of(db=db, request=request)


@admin_router.post(
    "/requests/{request_id}/deny",
    response_model=RequestStatusOut,
    responses=ACTION_RESPONSES,
    summary="awaiting_approval -> denied",
)
def deny(
    request_id: RequestId, principal: AdminDep, db: DbDep, body: ActionBodyDep = None
) -> RequestStatusOut:
    request = service.deny(
        db=db, request_id=request_id, principal=principal, reason=body.reason if body else None
    )
    return service.status_of(db=db, request=request)


@admin_router.post(
    "/requests/{request_id}/retry",
    response_model=RequestStatusOut,
    responses=ACTION_RESPONSES,
    summary="failed -> queued (its failed jobs are queued again)",
)
def retry(
    request_id: RequestId, principal: AdminDep, db: DbDep, body: ActionBodyDep = None
) -> RequestStatusOut:
    request = service.retry(
        db=db, request_id=request_id, principal=principal, reason=body.reason if body else None
    )
    return service.status_of(db=db, request=request)


@admin_router.post(
    "/requests/{request_id}/cancel",
    response_model=RequestStatusOut,
    responses=ACTION_RESPONSES,
    summary="queued | awaiting_approval | failed -> cancelled",
)
def cancel(
    request_id: RequestId, principal: AdminDep, db: DbDep, body: ActionBodyDep = None
) -> RequestStatusOut:
    request = service.cancel(
        db=db, request_id=request_id, principal=principal, reason=body.reason if body else None
    )
    return service.status_of(db=db, request=request)
