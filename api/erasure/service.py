"""Erasure requests: filing (validated against the database), reading, admin queries and the
admin actions that move a request through :mod:`api.erasure.states`.

Keyword-only functions over a SQLAlchemy session, as in Netflix Dispatch. Functions that
change state commit; readers never do. Everything a tenant reads is filtered by its tenant:
another tenant's request is "not found", never "forbidden".
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Sequence
from functools import lru_cache
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, and_, exists, func, not_, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, aliased

from api import wake
from api.audit.models import AuditEvent
from api.audit.service import append as audit_append
from api.audit.service import events_for_request
from api.auth.dependencies import Principal
from api.compaction.policy import policy_of
from api.config import get_settings
from api.database.core import utcnow
from api.datasets.models import Dataset, Sample
from api.erasure import states
from api.erasure.models import ErasureRequest, RequestJob
from api.erasure.schemas import (
    ErasureRequestCreate,
    JobOut,
    RequestStats,
    RequestStatusOut,
    RequestSummary,
    VersionOut,
)
from api.erasure.states import FINAL, JobStatus, RequestStatus
from api.errors import ConflictError, NotFoundError
from api.registry.models import Model, ModelVersion
from unlearning_core.errors import ForgetSetError, MethodError
from unlearning_core.methods import OptionError, get_method, validate_options
from unlearning_core.methods.auto import AUTO, Ranking, load_ranking
from unlearning_core.methods.auto import choose as choose_method
from unlearning_core.vocab import Guarantee

S = RequestStatus


# ---------------------------------------------------------------------------------------
# Filing a request
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """One model a request will unlearn from, with the samples of its dataset to forget."""

    model: Model
    method: str
    sample_ids: list[str]
    #: The request's method options validated against ``method`` (defaults filled in);
    #: None when the request named none.
    method_options: dict[str, Any] | None = None
    #: How ``auto`` chose ``method`` (method, reason, what it considered); None otherwise.
    choice: dict[str, Any] | None = None


def _few(values: Sequence[str], n: int = 3) -> str:
    shown = ", ".join(repr(v) for v in values[:n])
    return shown + (f" (and {len(values) - n} more)" if len(values) > n else "")


def _train_samples(db: Session, dataset_id: int) -> int:
    return int(db.scalar(select(Dataset.num_samples).where(Dataset.id == dataset_id)) or 0)


@lru_cache(maxsize=1)
def _ranking_at(path: str, mtime: float) -> Ranking | None:
    return load_ranking(path)


def method_ranking() -> Ranking | None:
    """The judge's ranking ``auto`` uses (``LETHE_METHOD_RANKING``), read again when the
    file changes; None when there is none."""
    path = get_settings().method_ranking
    try:
        mtime = os.stat(path).st_mtime
    except OSError:
        return None
    return _ranking_at(str(path), mtime)


def resolve_targets(*, db: Session, body: ErasureRequestCreate, tenant: str) -> list[Target]:
    """Lineage: subject / sample ids -> ``tenant``'s datasets holding them -> its models
    trained on those.

    Only the tenant's own models are candidates, so the 422 for a subject no model holds
    reads the same whether or not another tenant has that subject: it names what the
    tenant itself has, never what exists elsewhere. Reads only. Erased samples count (a repeated request is answered, not refused). Raises
    :class:`NotFoundError` for unknown models, :class:`ConflictError` for models not ready,
    :class:`ForgetSetError` (422) when the subject or sample ids are not in the training
    data, :class:`MethodError` (422) when the method cannot unlearn a model or refuses the
    request's ``method_options`` (checked per target: without ``method``, each model's own
    default method must accept them).
    """
    if body.models:
        rows = {
            m.name: m
            for m in db.scalars(select(Model).where(Model.tenant == tenant, Model.name.in_(body.models)))
        }
        missing = [n for n in body.models if n not in rows]
        if missing:
            raise NotFoundError(f"unknown model{'s' if len(missing) > 1 else ''} {_few(missing)}")
        not_ready = [rows[n] for n in body.models if rows[n].status != "ready"]
        if not_ready:
            m = not_ready[0]
            raise ConflictError(
                f"model {m.name!r} is not ready (status {m.status!r}); retry once it is trained"
            )
        candidates = [rows[n] for n in body.models]
        where = f"the training data of {_few([m.name for m in candidates])}"
    else:
        candidates = list(
            db.scalars(
                select(Model).where(Model.tenant == tenant, Model.status == "ready").order_by(Model.name)
            )
        )
        where = "the training data of any ready model of your tenant"
    dataset_ids = sorted({m.dataset_id for m in candidates})

    matches: list[ColumnElement[bool]] = []
    if body.subject_id:
        matches.append(Sample.subject_id == body.subject_id)
    if body.sample_ids:
        matches.append(Sample.sample_id.in_(body.sample_ids))
    found: dict[int, list[str]] = {}
    subject_seen = False
    ids_seen: set[str] = set()
    if dataset_ids:
        query = (
            select(Sample.dataset_id, Sample.sample_id, Sample.subject_id)
            .where(Sample.dataset_id.in_(dataset_ids), or_(*matches))
            .order_by(Sample.dataset_id, Sample.position)
        )
        for dataset_id, sample_id, subject_id in db.execute(query):
            found.setdefault(dataset_id, []).append(sample_id)
            subject_seen = subject_seen or (
                body.subject_id is not None and subject_id == body.subject_id
            )
            ids_seen.add(sample_id)
    if body.subject_id and not subject_seen:
        raise ForgetSetError(
            f"unknown data subject {body.subject_id!r}: it has no samples in {where}"
        )
    if body.sample_ids:
        unknown = [s for s in body.sample_ids if s not in ids_seen]
        if unknown:
            raise ForgetSetError(f"unknown sample ids, not in {where}: {_few(unknown)}")

    targets: list[Target] = []
    for model in candidates:
        ids = found.get(model.dataset_id)
        if not ids:
            if body.models:
                raise ForgetSetError(
                    f"model {model.name!r} was not trained on any of the named samples"
                )
            continue
        method = body.method or model.unlearn_method
        choice = None
        if method == AUTO:
            if body.method_options is not None:
                raise OptionError(
                    "method_options go with a named method, not with 'auto' (which picks the method "
                    "and uses its defaults)", method=AUTO, options=sorted(body.method_options),
                )
            picked = choose_method(
                trained_with=model.method, forget_samples=len(ids),
                train_samples=_train_samples(db, model.dataset_id), ranking=method_ranking(),
            )
            method, choice = picked.method, picked.as_json()
        impl = get_method(method)
        if model.method not in impl.trained_with:
            raise MethodError(
                f"method {method!r} cannot unlearn model {model.name!r}, which was trained with "
                f"{model.method!r}; it needs a model trained with {' or '.join(repr(str(t)) for t in impl.trained_with)}"
            )
        options = None
        if choice is not None and choice.get("options"):
            try:  # the variant the judge ranked: its options and recovery steps
                options = validate_options(impl, choice["options"]).model_dump(mode="json")
            except OptionError as exc:  # a ranking written by another version of the method
                choice = {**choice, "options": {},
                          "reason": f"{choice['reason']}; its judged options no longer apply ({exc}): defaults"}
        if body.method_options is not None:
            try:
                options = validate_options(impl, body.method_options).model_dump(mode="json")
            except OptionError as exc:
                whose = "" if body.method else f" (the default method of model {model.name!r})"
                raise OptionError(f"{exc}{whose}", method=exc.method, options=exc.options) from None
        targets.append(Target(model=model, method=method, sample_ids=ids, method_options=options, choice=choice))
    return targets


def _by_idempotency_key(db: Session, tenant: str, key: str) -> ErasureRequest | None:
    return db.scalar(
        select(ErasureRequest).where(
            ErasureRequest.tenant == tenant, ErasureRequest.idempotency_key == key
        )
    )


def _replay(existing: ErasureRequest, body_sha256: str, key: str) -> ErasureRequest:
    if existing.body_sha256 != body_sha256:
        raise ConflictError(
            f"Idempotency-Key {key!r} was already used for request {existing.id} with a different body; "
            "use a new key for a new request"
        )
    return existing


def create(
    *, db: Session, principal: Principal, body: ErasureRequestCreate, idempotency_key: str | None
) -> tuple[ErasureRequest, bool]:
    """File a request; returns ``(request, created)`` (``created`` False: an idempotent replay).

    Validates everything against the database before writing; then stores the request
    (``received`` -> ``queued`` or ``awaiting_approval``), one job per target model and the
    audit events, in one transaction.
    """
    digest = body.canonical_sha256()
    if idempotency_key is not None:
        existing = _by_idempotency_key(db, principal.tenant, idempotency_key)
        if existing is not None:
            return _replay(existing, digest, idempotency_key), False
    targets = resolve_targets(db=db, body=body, tenant=principal.tenant)
    settings = get_settings()
    now = utcnow()
    request = ErasureRequest(
        id=str(uuid.uuid4()),
        tenant=principal.tenant,
        api_key_id=principal.key_id,
        subject_id=body.subject_id,
        sample_ids=list(body.sample_ids or []),
        target_models=list(body.models) if body.models else None,
        method=body.method,
        status=S.RECEIVED,
        idempotency_key=idempotency_key,
        body_sha256=digest,
        received_at=now,
        due_at=now + timedelta(days=settings.erasure_due_days),
        updated_at=now,
    )
    held = settings.require_approval
    try:
        db.add(request)
        db.flush()
        states.received(
            db,
            request,
            actor=principal.name,
            payload={
                "tenant": principal.tenant,
                "subject_id": body.subject_id,
                "sample_ids": len(request.sample_ids),
                "models": [t.model.name for t in targets],
                "method": body.method,
                "method_options": (
                    {t.model.name: t.method_options for t in targets}
                    if body.method_options is not None
                    else None
                ),
                "method_choice": {t.model.name: t.choice for t in targets if t.choice} or None,
                "due_at": request.due_at.isoformat(),
            },
        )
        for t in targets:
            db.add(
                RequestJob(
                    request_id=request.id,
                    model_id=t.model.id,
                    method=t.method,
                    method_options=t.method_options,
                    status=JobStatus.PENDING if held else JobStatus.QUEUED,
                    progress=0.0,
                    sample_ids=t.sample_ids,
                    attempts=0,
                    details={"method_choice": t.choice} if t.choice else {},
                )
            )
        states.transition(
            db,
            request,
            S.AWAITING_APPROVAL if held else S.QUEUED,
            actor=principal.name,
            payload={
                "jobs": [
                    {"model": t.model.name, "method": t.method, "samples": len(t.sample_ids)}
                    for t in targets
                ]
            },
        )
        if not held:  # the message leaves once the request is committed (best effort)
            db.flush()
            wake.after_commit(db, wake.PROCESS_JOB, queued_job_ids(db=db, request_id=request.id))
        db.commit()
    except IntegrityError:
        db.rollback()
        if idempotency_key is not None:  # a concurrent request with the same key won the race
            existing = _by_idempotency_key(db, principal.tenant, idempotency_key)
            if existing is not None:
                return _replay(existing, digest, idempotency_key), False
        raise
    except BaseException:
        db.rollback()
        raise
    return request, True


# ---------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------


def add_late_jobs(*, db: Session, model: Model, erased: dict[str, list[str]]) -> list[int]:
    """Jobs for erasures that completed while ``model`` trained on their samples
    (``erased``: sample ids by the request that erased them), queued in the caller's
    transaction (the worker is woken on commit) with the model's default method; audited
    ``job.added``. The requests stay ``completed``; their status lists the model."""
    ids: list[int] = []
    for request_id, sample_ids in sorted(erased.items()):
        request = db.get(ErasureRequest, request_id) if request_id else None
        if request is None:  # tombstoned by no request (a dataset registered so): no owner
            continue
        ids.append(
            add_follow_up_job(
                db=db, request_id=request.id, model=model, method=model.unlearn_method,
                sample_ids=sample_ids, reason="its samples were erased while the model trained",
                event="job.added",
            )
        )
    return ids


def add_follow_up_job(
    *,
    db: Session,
    request_id: str,
    model: Model,
    method: str,
    sample_ids: Sequence[str],
    reason: str,
    event: str,
    method_options: dict[str, Any] | None = None,
    reapplies_job_id: int | None = None,
    payload: dict[str, Any] | None = None,
) -> int:
    """A queued job added to a request that may be completed already (a model that was
    training when it completed, or an erasure applied again on a compaction's new lineage):
    audited ``event``, the worker woken on commit. Its id."""
    job = RequestJob(
        request_id=request_id,
        model_id=model.id,
        method=method,
        method_options=method_options,
        sample_ids=sorted(sample_ids),
        status=JobStatus.QUEUED,
        reapplies_job_id=reapplies_job_id,
        details={"reason": reason},
    )
    db.add(job)
    db.flush()
    audit_append(
        db,
        event,
        request_id=request_id,
        model_name=model.name,
        tenant=model.tenant,
        actor="worker",
        payload={"job_id": job.id, "samples": len(sample_ids), "reason": reason, **(payload or {})},
    )
    wake.after_commit(db, wake.PROCESS_JOB, [job.id])
    return job.id


def queued_job_ids(*, db: Session, request_id: str) -> list[int]:
    """The request's queued jobs, in order (the ones a worker is woken for)."""
    return list(
        db.scalars(
            select(RequestJob.id)
            .where(RequestJob.request_id == request_id, RequestJob.status == JobStatus.QUEUED)
            .order_by(RequestJob.id)
        )
    )



def _not_exact_clause() -> ColumnElement[bool]:
    """Some job of the request is answered approximately only (waiting for the exact tier)."""
    return exists().where(
        RequestJob.request_id == ErasureRequest.id,
        RequestJob.status == JobStatus.COMPLETED,
        RequestJob.exact_at.is_(None),
    )


def overdue_clause(now: datetime) -> ColumnElement[bool]:
    """Past its due date and either not final, or completed but not exact on every model
    (the approximate tier answers fast; the law asks for the exact one by the due date)."""
    return and_(
        ErasureRequest.due_at < now,
        or_(
            ErasureRequest.status.not_in([s.value for s in FINAL]),
            and_(ErasureRequest.status == RequestStatus.COMPLETED, _not_exact_clause()),
        ),
    )


def is_overdue(request: ErasureRequest, now: datetime | None = None, *, exact: bool = True) -> bool:
    """``exact``: whether every job of the request is exact (see :func:`overdue_clause`)."""
    if request.due_at >= (now or utcnow()):
        return False
    return request.status not in FINAL or (request.status == RequestStatus.COMPLETED and not exact)


def get(*, db: Session, request_id: str, principal: Principal) -> ErasureRequest:
    """The principal's tenant's request, or :class:`NotFoundError` (also for other tenants')."""
    request = db.scalar(
        select(ErasureRequest).where(
            ErasureRequest.id == request_id, ErasureRequest.tenant == principal.tenant
        )
    )
    if request is None:
        raise NotFoundError(f"no erasure request {request_id!r}")
    return request


def _exact_due_at(request: ErasureRequest, model: Model) -> datetime:
    """When the job must be exact: the model's policy (``compact_within_days`` after the
    request was received), and never later than the legal due date."""
    days = policy_of(model.erasure_policy).compact_within_days
    if days is None:
        return request.due_at
    return min(request.due_at, request.received_at + timedelta(days=days))


def status_of(*, db: Session, request: ErasureRequest) -> RequestStatusOut:
    """The request with its jobs, the versions that answer them and each one's tier."""
    exact_version = aliased(ModelVersion)
    rows = db.execute(
        select(RequestJob, Model, ModelVersion, exact_version.number)
        .join(Model, Model.id == RequestJob.model_id)
        .outerjoin(ModelVersion, ModelVersion.id == RequestJob.version_id)
        .outerjoin(exact_version, exact_version.id == RequestJob.exact_version_id)
        .where(RequestJob.request_id == request.id)
        .order_by(RequestJob.id)
    ).all()
    jobs = [
        JobOut(
            guarantee=Guarantee.EXACT if job.exact_at is not None else Guarantee.APPROXIMATE,
            approximate_version=(
                version.number
                if version is not None and version.id != job.exact_version_id
                else None
            ),
            exact_version=exact_number,
            exact_at=job.exact_at,
            exact_due_at=_exact_due_at(request, model),
            reapplies_job_id=job.reapplies_job_id,
            job_id=job.id,
            model=model.name,
            method=job.method,
            method_options=job.method_options,
            status=JobStatus(job.status),
            progress=job.progress,
            step=job.step,
            error=job.error,
            attempts=job.attempts,
            device=job.device,
            started_at=job.started_at,
            finished_at=job.finished_at,
            details=job.details or {},
            version=(
                VersionOut(
                    number=version.number,
                    weights_sha256=version.weights_sha256,
                    metrics=version.metrics or {},
                )
                if version is not None
                else None
            ),
        )
        for job, model, version, exact_number in rows
    ]
    exact = request.status == RequestStatus.COMPLETED and all(
        j.exact_at is not None for j, *_ in rows if j.status != JobStatus.CANCELLED
    )
    return RequestStatusOut(
        id=request.id,
        status=RequestStatus(request.status),
        subject_id=request.subject_id,
        sample_ids=list(request.sample_ids or []),
        method=request.method,
        received_at=request.received_at,
        due_at=request.due_at,
        overdue=is_overdue(request, exact=exact),
        exact=exact,
        completed_at=request.completed_at,
        error=request.error,
        jobs=jobs,
    )


@dataclass(frozen=True)
class RequestFilter:
    status: Sequence[RequestStatus] | None = None
    subject_id: str | None = None
    model: str | None = None
    received_from: datetime | None = None
    received_to: datetime | None = None
    overdue: bool | None = None


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def get_all(
    *, db: Session, principal: Principal, filters: RequestFilter, limit: int = 50, offset: int = 0
) -> tuple[list[RequestSummary], int]:
    """The tenant's requests matching ``filters``, newest first, and how many match in all."""
    now = utcnow()
    conditions: list[ColumnElement[bool]] = [ErasureRequest.tenant == principal.tenant]
    if filters.status:
        conditions.append(ErasureRequest.status.in_([s.value for s in filters.status]))
    if filters.subject_id is not None:
        conditions.append(ErasureRequest.subject_id == filters.subject_id)
    if filters.model is not None:
        conditions.append(
            ErasureRequest.id.in_(
                select(RequestJob.request_id)
                .join(Model, Model.id == RequestJob.model_id)
                .where(Model.tenant == principal.tenant, Model.name == filters.model)
            )
        )
    if filters.received_from is not None:
        conditions.append(ErasureRequest.received_at >= _aware(filters.received_from))
    if filters.received_to is not None:
        conditions.append(ErasureRequest.received_at < _aware(filters.received_to))
    if filters.overdue is not None:
        clause = overdue_clause(now)
        conditions.append(clause if filters.overdue else not_(clause))
    where = and_(*conditions)
    total = int(db.scalar(select(func.count(ErasureRequest.id)).where(where)) or 0)
    requests = list(
        db.scalars(
            select(ErasureRequest)
            .where(where)
            .order_by(ErasureRequest.received_at.desc(), ErasureRequest.id)
            .limit(limit)
            .offset(offset)
        )
    )
    models: dict[str, list[str]] = {r.id: [] for r in requests}
    exact: dict[str, bool] = {r.id: r.status == RequestStatus.COMPLETED for r in requests}
    if requests:
        for request_id, name, status, exact_at in db.execute(
            select(RequestJob.request_id, Model.name, RequestJob.status, RequestJob.exact_at)
            .join(Model, Model.id == RequestJob.model_id)
            .where(RequestJob.request_id.in_(list(models)))
            .order_by(RequestJob.id)
        ):
            if name not in models[request_id]:
                models[request_id].append(name)
            if status != JobStatus.CANCELLED and exact_at is None:
                exact[request_id] = False
    items = [
        RequestSummary(
            id=r.id,
            status=RequestStatus(r.status),
            subject_id=r.subject_id,
            sample_count=len(r.sample_ids or []),
            models=models[r.id],
            received_at=r.received_at,
            due_at=r.due_at,
            overdue=is_overdue(r, now, exact=exact[r.id]),
            exact=exact[r.id],
            completed_at=r.completed_at,
            error=r.error,
        )
        for r in requests
    ]
    return items, total


def _seconds_between(db: Session, start: Any, end: Any) -> Any:
    if db.get_bind().dialect.name == "postgresql":
        return func.extract("epoch", end - start)
    return (func.julianday(end) - func.julianday(start)) * 86400.0


def stats(*, db: Session, principal: Principal) -> RequestStats:
    """Counts by status, the overdue count and the mean time to complete, for the tenant."""
    tenant = ErasureRequest.tenant == principal.tenant
    counts = {s.value: 0 for s in RequestStatus if s != S.RECEIVED}
    for status, n in db.execute(
        select(ErasureRequest.status, func.count(ErasureRequest.id))
        .where(tenant)
        .group_by(ErasureRequest.status)
    ):
        counts[status] = int(n)
    overdue = int(
        db.scalar(select(func.count(ErasureRequest.id)).where(tenant, overdue_clause(utcnow())))
        or 0
    )
    mean = db.scalar(
        select(
            func.avg(_seconds_between(db, ErasureRequest.received_at, ErasureRequest.completed_at))
        ).where(
            tenant, ErasureRequest.status == S.COMPLETED, ErasureRequest.completed_at.is_not(None)
        )
    )
    return RequestStats(
        counts=counts,
        total=sum(counts.values()),
        overdue=overdue,
        completed=counts[S.COMPLETED],
        mean_seconds_to_complete=float(mean) if mean is not None else None,
    )


def audit_events(*, db: Session, request: ErasureRequest) -> list[AuditEvent]:
    return events_for_request(db, request.id)


# ---------------------------------------------------------------------------------------
# Admin actions
# ---------------------------------------------------------------------------------------


def _locked(db: Session, request_id: str, principal: Principal) -> ErasureRequest:
    request = db.scalar(
        select(ErasureRequest)
        .where(ErasureRequest.id == request_id, ErasureRequest.tenant == principal.tenant)
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    if request is None:
        raise NotFoundError(f"no erasure request {request_id!r}")
    return request


def _set_jobs(
    db: Session, request_id: str, from_: Sequence[JobStatus], to: JobStatus, **values: Any
) -> int:
    result = db.execute(
        update(RequestJob)
        .where(RequestJob.request_id == request_id, RequestJob.status.in_([s.value for s in from_]))
        .values(status=to.value, **values)
        .execution_options(synchronize_session=False)
    )
    return int(result.rowcount or 0)  # type: ignore[attr-defined]


def _act(
    *,
    db: Session,
    request_id: str,
    principal: Principal,
    action: str,
    target: RequestStatus,
    jobs_from: Sequence[JobStatus],
    jobs_to: JobStatus,
    reason: str | None,
    job_values: dict[str, Any] | None = None,
) -> ErasureRequest:
    try:
        request = _locked(db, request_id, principal)
        states.check(request.id, request.status, target, action=action)
        moved = _set_jobs(db, request.id, jobs_from, jobs_to, **(job_values or {}))
        if target == S.QUEUED:
            request.error = None
        states.transition(
            db,
            request,
            target,
            actor=principal.name,
            action=action,
            reason=reason,
            payload={"action": action, "jobs": moved},
        )
        if jobs_to == JobStatus.QUEUED:  # wake a worker once committed (best effort)
            wake.after_commit(db, wake.PROCESS_JOB, queued_job_ids(db=db, request_id=request.id))
        db.commit()
    except BaseException:
        db.rollback()
        raise
    return request


def approve(
    *, db: Session, request_id: str, principal: Principal, reason: str | None = None
) -> ErasureRequest:
    """awaiting_approval -> queued: its jobs become workable."""
    return _act(
        db=db,
        request_id=request_id,
        principal=principal,
        action="approve",
        target=S.QUEUED,
        jobs_from=[JobStatus.PENDING],
        jobs_to=JobStatus.QUEUED,
        reason=reason,
    )


def deny(
    *, db: Session, request_id: str, principal: Principal, reason: str | None = None
) -> ErasureRequest:
    """awaiting_approval -> denied (final): its jobs are cancelled."""
    return _act(
        db=db,
        request_id=request_id,
        principal=principal,
        action="deny",
        target=S.DENIED,
        jobs_from=[JobStatus.PENDING, JobStatus.QUEUED],
        jobs_to=JobStatus.CANCELLED,
        reason=reason,
        job_values={"finished_at": utcnow()},
    )


def retry(
    *, db: Session, request_id: str, principal: Principal, reason: str | None = None
) -> ErasureRequest:
    """failed -> queued: the failed jobs are queued again (completed ones stay done)."""
    return _act(
        db=db,
        request_id=request_id,
        principal=principal,
        action="retry",
        target=S.QUEUED,
        jobs_from=[JobStatus.FAILED],
        jobs_to=JobStatus.QUEUED,
        reason=reason,
        job_values={"error": None, "progress": 0.0, "step": None, "finished_at": None},
    )


def cancel(
    *, db: Session, request_id: str, principal: Principal, reason: str | None = None
) -> ErasureRequest:
    """queued | awaiting_approval | failed -> cancelled (final): unfinished jobs are cancelled."""
    return _act(
        db=db,
        request_id=request_id,
        principal=principal,
        action="cancel",
        target=S.CANCELLED,
        jobs_from=[JobStatus.PENDING, JobStatus.QUEUED, JobStatus.FAILED],
        jobs_to=JobStatus.CANCELLED,
        reason=reason,
        job_values={"finished_at": utcnow()},
    )
