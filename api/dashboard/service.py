"""What the dashboard pages show, read through the domain services in the admin's tenant.

The pages never call the HTTP API: they use the same service functions its handlers use,
so tenancy and filtering rules are the API's own.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import and_, or_, select
from sqlalchemy.orm import Session

from api.audit.models import AuditEvent
from api.audit.service import verify
from api.auth.dependencies import Principal
from api.compaction import service as compaction
from api.database.core import utcnow
from api.erasure import service as erasure
from api.erasure.models import ErasureRequest
from api.erasure.schemas import RequestStats, RequestStatusOut, RequestSummary
from api.erasure.states import FINAL
from api.errors import NotFoundError
from api.registry import service as registry
from api.registry import withdrawal
from api.registry.models import Model, ModelVersion
from api.registry.reports import has_report, version_report
from unlearning_core.metrics import MetricNames

#: The metrics of the version tables (model page, request page), from the metric registry:
#: live views, so a metric registered after import (a plugin, a test) is shown too. The
#: templates read labels and formats from ``VERSION_METRICS.specs``.
VERSION_METRICS = MetricNames("version")
#: The series of the model chart: registered with ``show=("chart", ...)``, all on a 0..1 axis.
CHART_METRICS = MetricNames("chart")
PAGE_SIZE = 50


def is_final(status: str) -> bool:
    return status in {s.value for s in FINAL}


@dataclass(frozen=True)
class RequestsPage:
    items: list[RequestSummary]
    total: int
    stats: RequestStats
    offset: int
    limit: int = PAGE_SIZE

    @property
    def live(self) -> bool:
        """Whether a row may still change (the page keeps polling while one can)."""
        return any(not is_final(r.status) for r in self.items)


def requests_page(
    *, db: Session, principal: Principal, filters: erasure.RequestFilter, offset: int = 0
) -> RequestsPage:
    items, total = erasure.get_all(db=db, principal=principal, filters=filters, limit=PAGE_SIZE, offset=offset)
    return RequestsPage(
        items=items, total=total, stats=erasure.stats(db=db, principal=principal), offset=offset
    )


@dataclass(frozen=True)
class RequestDetail:
    status: RequestStatusOut
    events: list[AuditEvent]

    @property
    def live(self) -> bool:
        return not is_final(self.status.status)


def request_detail(*, db: Session, principal: Principal, request_id: str) -> RequestDetail:
    """The request (404 for another tenant's), its jobs with versions and metrics, its audit
    timeline."""
    request = erasure.get(db=db, request_id=request_id, principal=principal)
    return RequestDetail(
        status=erasure.status_of(db=db, request=request),
        events=erasure.audit_events(db=db, request=request),
    )


@dataclass(frozen=True)
class ModelRow:
    name: str
    dataset: str
    architecture: str
    method: str
    unlearn_method: str
    status: str
    latest: int | None
    awaiting_exact: int = 0  # requests answered approximately only
    oldest_exact_due: Any = None  # when the oldest of them must be exact (the policy)
    compaction: str | None = None  # the last compaction's status
    alerts: list[str] = field(default_factory=list)


def models(*, db: Session, principal: Principal) -> list[ModelRow]:
    """The admin's tenant's models with their erasure health."""
    rows = []
    for m, dataset, latest in registry.get_all(db=db, tenant=principal.tenant):
        health = compaction.health(db=db, model=m)
        rows.append(
            ModelRow(
                name=m.name, dataset=dataset, architecture=m.architecture, method=m.method,
                unlearn_method=m.unlearn_method, status=m.status, latest=latest,
                awaiting_exact=health["awaiting_exact"]["requests"],
                oldest_exact_due=health["awaiting_exact"]["oldest_exact_due_at"],
                compaction=health["compaction"]["status"] if health["compaction"] else None,
                alerts=health["alerts"],
            )
        )
    return rows


@dataclass(frozen=True)
class VersionRow:
    number: int
    parent: int | None
    method: str
    created_at: Any
    weights_sha256: str
    metrics: dict[str, Any]
    requests: list[str] = field(default_factory=list)
    has_report: bool = False  # an erasure report this tenant may read (api/registry/reports)
    withdraw_at: Any = None  # when it is (or was) withdrawn: superseded by ``successor``
    withdrawn: bool = False  # the withdrawal is in force (its weights answer 410)
    successor: int | None = None


@dataclass(frozen=True)
class ModelHistory:
    model: Model
    dataset: str
    versions: list[VersionRow]
    health: dict[str, Any] = field(default_factory=dict)  # GET /models/{name}/health

    def chart(self) -> dict[str, Any]:
        """Chart.js data: one label per version, one series per metric (null where a
        version has no such metric, e.g. a version 0 trained before evaluation existed)."""
        return {
            "labels": [f"v{v.number}" for v in self.versions],
            "series": {
                name: [_number(v.metrics.get(name)) for v in self.versions] for name in CHART_METRICS
            },
        }


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def model_history(*, db: Session, principal: Principal, name: str) -> ModelHistory:
    """The model's versions, oldest first, with metrics and the tenant's requests each answers."""
    model = registry.get_or_raise(db=db, name=name, tenant=principal.tenant)
    versions: list[ModelVersion] = registry.get_versions(db=db, model_id=model.id)
    answered = registry.answers(db=db, version_ids=[v.id for v in versions], tenant=principal.tenant)
    gone = withdrawal.of_versions(db=db, version_ids=[v.id for v in versions])
    now = utcnow()
    return ModelHistory(
        model=model,
        dataset=registry.dataset_name(db=db, model=model),
        versions=[
            VersionRow(
                number=v.number, parent=v.parent_number, method=v.method, created_at=v.created_at,
                weights_sha256=v.weights_sha256, metrics=v.metrics or {}, requests=answered[v.id],
                has_report=has_report(v, principal.tenant),
                withdraw_at=gone[v.id].effective_at if v.id in gone else None,
                withdrawn=v.id in gone and gone[v.id].in_force(now),
                successor=gone[v.id].successor_number if v.id in gone else None,
            )
            for v in versions
        ],
        health=compaction.health(db=db, model=model),
    )


@dataclass(frozen=True)
class AuditPage:
    result: dict[str, Any]
    events: list[AuditEvent]


def audit_page(*, db: Session, principal: Principal, limit: int = 50) -> AuditPage:
    """The whole chain's verification (hashes only) and the tenant's latest events (its
    requests', models', datasets' and webhooks'): another tenant's events name its data
    subjects and resources and are not shown."""
    events = list(
        db.scalars(
            select(AuditEvent)
            .outerjoin(ErasureRequest, ErasureRequest.id == AuditEvent.request_id)
            .where(
                or_(
                    AuditEvent.tenant == principal.tenant,
                    and_(AuditEvent.tenant.is_(None), ErasureRequest.tenant == principal.tenant),
                )
            )
            .order_by(AuditEvent.seq.desc())
            .limit(limit)
        )
    )
    return AuditPage(result=verify(db), events=events)


def report_html(*, db: Session, principal: Principal, name: str, number: int) -> bytes:
    """A version's stored erasure report, read as the registry route reads it."""
    model = registry.get_or_raise(db=db, name=name, tenant=principal.tenant)
    row = registry.get_version(db=db, model_id=model.id, number=number)
    if row is None:
        raise NotFoundError(f"model {name!r} has no version {number}")
    store = registry.store_of(db=db, model=model)
    return version_report(store=store, model_name=model.name, row=row, tenant=principal.tenant)
