"""Models, training runs and versions: keyword-only queries and the "queue a training" write.

Training itself (minutes of torch) happens outside any request in
:mod:`api.registry.flows`; here a model is only created with a queued run.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from api import wake
from api.audit.models import AuditEvent
from api.audit.service import append as audit
from api.auth.tenants import DEFAULT_TENANT
from api.compaction.policy import default_policy, merged
from api.datasets import service as datasets
from api.datasets.models import Dataset, Sample
from api.erasure.models import ErasureRequest, RequestJob
from api.errors import ConflictError, NotFoundError
from api.jobs.states import JobState
from api.registry.models import Model, ModelVersion, TrainingRun
from api.registry.schemas import ModelCreate
from unlearning_core.errors import DatasetError, RunError
from unlearning_core.recording import PruneSchedule
from unlearning_core.runs.ledger import VersionEntry
from unlearning_core.runs.spec import BlobPointer
from unlearning_core.store import BlobRef, BlobStore
from unlearning_core.vocab import TrainingMethod


def get(*, db: Session, name: str, tenant: str) -> Model | None:
    """``tenant``'s model ``name`` (another tenant's is None, as if it did not exist)."""
    return db.scalar(select(Model).where(Model.tenant == tenant, Model.name == name))


def get_or_raise(*, db: Session, name: str, tenant: str) -> Model:
    model = get(db=db, name=name, tenant=tenant)
    if model is None:
        raise NotFoundError(f"no model named {name!r}")
    return model


def latest_numbers(*, db: Session, model_ids: list[int]) -> dict[int, int]:
    """Newest version number of each model that has one."""
    if not model_ids:
        return {}
    rows = db.execute(
        select(ModelVersion.model_id, func.max(ModelVersion.number))
        .where(ModelVersion.model_id.in_(model_ids))
        .group_by(ModelVersion.model_id)
    )
    return {model_id: int(number) for model_id, number in rows}


def get_all(*, db: Session, tenant: str) -> list[tuple[Model, str, int | None]]:
    """Every model of ``tenant`` with its dataset's name and its latest version number."""
    rows = db.execute(
        select(Model, Dataset.name)
        .join(Dataset, Dataset.id == Model.dataset_id)
        .where(Model.tenant == tenant)
        .order_by(Model.name)
    ).all()
    latest = latest_numbers(db=db, model_ids=[m.id for m, _ in rows])
    return [(model, dataset_name, latest.get(model.id)) for model, dataset_name in rows]


def dataset_name(*, db: Session, model: Model) -> str:
    return db.scalar(select(Dataset.name).where(Dataset.id == model.dataset_id)) or ""


def get_version(*, db: Session, model_id: int, number: int) -> ModelVersion | None:
    return db.scalar(
        select(ModelVersion).where(ModelVersion.model_id == model_id, ModelVersion.number == number)
    )


def latest_version(*, db: Session, model_id: int) -> ModelVersion | None:
    return db.scalar(
        select(ModelVersion)
        .where(ModelVersion.model_id == model_id)
        .order_by(ModelVersion.number.desc())
        .limit(1)
    )


def get_versions(*, db: Session, model_id: int) -> list[ModelVersion]:
    return list(
        db.scalars(
            select(ModelVersion)
            .where(ModelVersion.model_id == model_id)
            .order_by(ModelVersion.number)
        )
    )


def count_versions(*, db: Session, model_id: int) -> int:
    return int(
        db.scalar(select(func.count(ModelVersion.id)).where(ModelVersion.model_id == model_id)) or 0
    )


def latest_run(*, db: Session, model_id: int) -> TrainingRun | None:
    return db.scalar(
        select(TrainingRun)
        .where(TrainingRun.model_id == model_id)
        .order_by(TrainingRun.id.desc())
        .limit(1)
    )


def store_of(*, db: Session, model: Model) -> BlobStore:
    """The blob store holding the model's run (and so its versions' weights and reports)."""
    from api.blobs import get_store

    run = latest_run(db=db, model_id=model.id)
    return get_store(run.store_url) if run is not None else get_store()


def answers(
    *, db: Session, version_ids: list[int], tenant: str | None = None
) -> dict[int, list[str]]:
    """Erasure request ids each version answers (their jobs point at it), oldest first.

    With ``tenant`` only that tenant's requests are listed: request ids are handles to
    another tenant's data subjects and are not shown across tenants.
    """
    out: dict[int, list[str]] = {v: [] for v in version_ids}
    if not version_ids:
        return out
    query = (
        select(RequestJob.version_id, RequestJob.request_id)
        .join(ErasureRequest, ErasureRequest.id == RequestJob.request_id)
        .where(RequestJob.version_id.in_(version_ids))
        .order_by(ErasureRequest.received_at, RequestJob.id)
    )
    if tenant is not None:
        query = query.where(ErasureRequest.tenant == tenant)
    for version_id, request_id in db.execute(query):
        if request_id not in out[version_id]:
            out[version_id].append(request_id)
    return out


def tenant_requests(*, db: Session, request_ids: set[str], tenant: str) -> set[str]:
    """Those of ``request_ids`` that belong to ``tenant`` (request ids are another tenant's
    handles to its data subjects: never shown across tenants)."""
    if not request_ids:
        return set()
    return set(
        db.scalars(
            select(ErasureRequest.id).where(
                ErasureRequest.id.in_(list(request_ids)), ErasureRequest.tenant == tenant
            )
        )
    )


def erased_count(*, db: Session, dataset_id: int) -> int:
    return int(
        db.scalar(
            select(func.count(Sample.id)).where(
                Sample.dataset_id == dataset_id, Sample.erased_at.is_not(None)
            )
        )
        or 0
    )


def new_run_id(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:8]}"


def create(
    *,
    db: Session,
    spec: ModelCreate,
    store: BlobStore,
    actor: str | None = None,
    tenant: str = DEFAULT_TENANT,
) -> tuple[Model, TrainingRun]:
    """Create ``tenant``'s model (status ``training``, on ``tenant``'s dataset named by the
    spec) with a queued training run in ``store`` (the API passes the tenant's prefix,
    :func:`api.blobs.tenant_store`) and an audit event.

    The embedded worker (or :func:`api.registry.flows.process_pending_training`) trains it.
    A single-model training leaves out the dataset's erased samples. Raises
    :class:`ConflictError` for a taken name or a SISA model on a dataset with erased samples
    (its shards could not agree on what to leave out), and a 422-mapped error for an
    unknown dataset or settings the dataset cannot satisfy. Commits.
    """
    if get(db=db, name=spec.name, tenant=tenant) is not None:
        raise ConflictError(f"a model named {spec.name!r} already exists")
    dataset = datasets.get(db=db, name=spec.dataset, tenant=tenant)
    if dataset is None:
        raise DatasetError(
            f"no dataset named {spec.dataset!r}; register it with POST /datasets first"
        )
    erased = erased_count(db=db, dataset_id=dataset.id)
    if erased and spec.method == TrainingMethod.SISA:
        raise ConflictError(
            f"dataset {dataset.name!r} has {erased} erased samples; a SISA model cannot leave them "
            "out yet: register the data again without them, or train a single model (it leaves them out)"
        )
    klass, _share = spec.concentration()
    if klass is not None and klass >= dataset.num_classes:
        raise RunError(
            f"concentrate names class {klass}, but dataset {dataset.name!r} has {dataset.num_classes} classes"
        )
    PruneSchedule(spec.prune_first, spec.prune_last)  # RunError (422) if out of range
    assert spec.unlearn_method is not None  # filled in by the schema
    model = Model(
        tenant=tenant,
        name=spec.name,
        dataset_id=dataset.id,
        architecture=spec.architecture,
        method=spec.method,
        unlearn_method=spec.unlearn_method,
        status="training",
        erasure_policy=(
            merged(None, spec.erasure_policy.model_dump(exclude_unset=True))
            if spec.erasure_policy is not None
            else default_policy()
        ).model_dump(mode="json"),
    )
    try:
        db.add(model)
        db.flush()
        run = TrainingRun(
            model_id=model.id,
            run_id=new_run_id(spec.name),
            store_url=store.url,
            method=spec.method,
            config=spec.model_dump(mode="json"),
            status=JobState.QUEUED,
        )
        db.add(run)
        db.flush()
        audit(
            db,
            "model.training_queued",
            model_name=model.name,
            tenant=model.tenant,
            actor=actor,
            payload={"run_id": run.run_id, "dataset": dataset.name, "config": run.config},
        )
        wake.after_commit(db, wake.TRAIN_RUN, [run.id])  # best effort; no-op when embedded
        db.commit()
    except IntegrityError:
        db.rollback()
        raise ConflictError(f"a model named {spec.name!r} already exists") from None
    except BaseException:
        db.rollback()
        raise
    return model, run


# ---------------------------------------------------------------------------------------
# Publishing versions: the one writer of ``model_versions`` (training and erasure call it)
# ---------------------------------------------------------------------------------------


def _newest_completed_run(model_id: int) -> Any:
    return (
        select(TrainingRun)
        .where(TrainingRun.model_id == model_id, TrainingRun.status == JobState.COMPLETED)
        .order_by(TrainingRun.id.desc())
        .limit(1)
    )


def lineage_run(*, db: Session, model_id: int) -> TrainingRun | None:
    """The model's lineage: its newest completed run (first training or compaction), the
    run every erasure works from (read only; :func:`lock_lineage` to change it)."""
    return db.scalar(_newest_completed_run(model_id))


def first_version_number(run: TrainingRun) -> int:
    """The number of a lineage's first version (0, or its compaction's)."""
    versions = (run.ledger or {}).get("versions") or [{}]
    return int(versions[0].get("version", 0))


def lock_lineage(*, db: Session, model_id: int) -> TrainingRun | None:
    """Lock the model's completed training run ``FOR UPDATE``: the lineage lock. Every change
    to a model's versions and ledger holds it, so concurrent erasures of one model are
    applied one after another.

    A compaction publishes a new lineage while holding the old one's lock; whoever waited
    for that lock then finds the newer run (each statement sees what committed before it
    ran) and takes its lock instead, so no erasure is applied to a replaced lineage."""
    newest = _newest_completed_run(model_id)
    locked = db.scalar(newest.with_for_update())
    while locked is not None:
        latest = db.scalar(newest.with_only_columns(TrainingRun.id))
        if latest == locked.id:
            return locked
        locked = db.scalar(
            select(TrainingRun)
            .where(TrainingRun.id == latest)
            .with_for_update()
            .execution_options(populate_existing=True)
        )
    return None


def version_payload(
    *, number: int, parent: int | None, method: str, weights: BlobPointer, metrics: dict[str, Any]
) -> dict[str, Any]:
    """The audit payload of a published version (``version.published``, ``model.trained``)."""
    return {
        "version": number,
        "parent": parent,
        "method": method,
        "weights_key": weights.key,
        "weights_sha256": weights.sha256,
        "weights_size": weights.size,
        "metrics": metrics,
    }


def publish_version(
    *,
    db: Session,
    model: Model,
    number: int,
    parent: int | None,
    method: str,
    weights: BlobPointer,
    metrics: dict[str, Any],
    created_at: datetime | None = None,
    event: str = "version.published",
    request_id: str | None = None,
    actor: str | None = None,
    payload: dict[str, Any] | None = None,
    report: Callable[[AuditEvent], tuple[BlobRef, str | None] | None] | None = None,
) -> ModelVersion:
    """Write version ``number`` of ``model`` (rows are written once, never updated) and its
    audit event ``event``, in the caller's transaction.

    The event comes first: ``report(event)`` renders the version's erasure report, which
    names the event (its place in the audit chain), and returns its blob and the tenant it
    belongs to; both go into the row.
    """
    body = version_payload(
        number=number, parent=parent, method=method, weights=weights, metrics=metrics
    )
    published = audit(
        db, event, request_id=request_id, model_name=model.name, tenant=model.tenant, actor=actor,
        payload={**body, **(payload or {})},
    )
    rendered = report(published) if report is not None else None
    ref, tenant = rendered if rendered is not None else (None, None)
    row = ModelVersion(
        model_id=model.id,
        number=number,
        parent_number=parent,
        method=method,
        weights_key=weights.key,
        weights_sha256=weights.sha256,
        weights_size=weights.size,
        metrics=metrics,
        report_key=ref.key if ref else None,
        report_sha256=ref.sha256 if ref else None,
        report_size=ref.size if ref else None,
        report_tenant=tenant if ref else None,
    )
    if created_at is not None:
        row.created_at = created_at
    db.add(row)
    db.flush()
    return row


def version_of_entry(*, db: Session, model_id: int, entry: VersionEntry) -> ModelVersion:
    """The row of an existing ledger version (written now if its lineage predates rows)."""
    row = get_version(db=db, model_id=model_id, number=entry.version)
    if row is None:
        row = ModelVersion(
            model_id=model_id,
            number=entry.version,
            parent_number=entry.parent,
            method=entry.method,
            weights_key=entry.weights.key,
            weights_sha256=entry.weights.sha256,
            weights_size=entry.weights.size,
            metrics={},
            created_at=entry.created_at,
        )
        db.add(row)
        db.flush()
    return row
