"""The purge sweep: delete what still holds erased data once nothing needs it.

What goes, per model, each time a sweep finds it (the workers run one every
``LETHE_PURGE_INTERVAL_SECONDS``; a sweep is idempotent and resumable):

- ``subtracted-step``: the recorded update of every step the lineage's ledger subtracted.
  Gradients computed on the erased samples; the ledger guarantees a subtracted step is
  never read again, so they go at once.
- ``withdrawn-version``: the weights and report of a version whose withdrawal is in force
  (:mod:`api.registry.withdrawal`: after the grace period). One exception: the current
  lineage's first version (its trained weights) is the reference of later erasures'
  metrics (distance to the original, forget accuracy before), so it stays until the next
  compaction replaces the lineage; the policy's ``compact_within_days`` bounds that.
- ``replaced-lineage``: every blob of a lineage a compaction replaced, once all of its
  versions are withdrawn in force (``run.json`` last, so a sweep killed half-way resumes).
- ``superseded-checkpoint``: a SISA slice checkpoint that the lineage's ledger no longer
  references (an erasure retrained its shard from an earlier slice). Planned under the
  lineage lock, taken without waiting (a model whose erasure is running is left to the
  next round), so a checkpoint an erasure is writing is never taken for superseded.
- ``erased-sample-data``: erased samples inside a manifest uploaded to Lethe, once nothing
  needs their images (:mod:`api.purge.uploads`: the upload is rewritten in place with their
  images blanked). Data Lethe does not own (built-in datasets, server paths) is never
  touched: its owner deletes it, and the receipt says so.

Kept always: the current lineage's head and first version, its unsubtracted updates, its
index, samples and ledger. Each deletion is a :class:`PurgedBlob` row (key, sha256, size,
reason, the requests where known) and part of one ``blobs.deleted`` audit event per model
and sweep. A blob deleted but not yet recorded (a crash in between) is recorded by the
next sweep; deleting a missing blob is a no-op, so nothing is deleted twice. On S3 a
delete removes every version of the key where the bucket keeps versions
(:meth:`unlearning_core.store.S3BlobStore.delete`).

A delete that fails is retried with backoff while the store is unavailable
(:mod:`api.purge.deletion`); if it still fails, the sweep records a ``purge.failed`` audit
event (key, reason, error), counts it in ``lethe_purge_failures_total{reason}``, skips the
rest of that store for this round (it is down) and goes on with the other models and
uploads. Nothing is recorded as deleted that was not, so the residual scan still lists the
blob and the next sweep tries again.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from api.audit.service import append as audit
from api.database.core import utcnow
from api.datasets.models import Dataset
from api.erasure.models import RequestJob
from api.jobs.states import JobState
from api.observability.metrics import count_purge_failure
from api.purge import deletion, uploads
from api.purge.deletion import DEFAULT_RETRY, Failure, RetryPolicy
from api.purge.models import PurgedBlob
from api.registry import service as registry
from api.registry.models import Model, ModelVersion, TrainingRun, VersionWithdrawal
from unlearning_core.artifacts import open_artifact
from unlearning_core.errors import BlobNotFoundError, BlobStoreError, BlobStoreUnavailableError
from unlearning_core.runs.artifact import run_prefix
from unlearning_core.store import BlobStore

log = logging.getLogger("lethe.purge")

SessionFactory = Callable[[], Session]
#: The store a model's blobs live in (the registry's, unless a caller wraps it).
StoreOf = Callable[[Session, Model], BlobStore]
FAILED = "purge.failed"


def _registry_store(db: Session, model: Model) -> BlobStore:
    return registry.store_of(db=db, model=model)


@dataclass(frozen=True)
class Doomed:
    """A blob the sweep deletes, and why."""

    key: str
    reason: str
    run_id: str
    sha256: str | None = None
    size: int | None = None
    version: int | None = None
    request_ids: tuple[str, ...] = field(default_factory=tuple)


def _run_of_key(key: str) -> str:
    parts = key.split("/")
    return parts[1] if len(parts) > 2 and parts[0] == "runs" else ""


def plan(
    *, db: Session, model: Model, store: BlobStore, now: datetime, for_deletion: bool = True
) -> list[Doomed]:
    """Everything of ``model`` the sweep may delete now (see the module doc). Only a sweep
    that deletes (``for_deletion``) takes the lineage lock for the SISA checkpoints; the
    residual scan only reads."""
    runs = list(
        db.scalars(
            select(TrainingRun)
            .where(TrainingRun.model_id == model.id, TrainingRun.status == JobState.COMPLETED)
            .order_by(TrainingRun.id)
        )
    )
    if not runs:
        return []
    lineage = runs[-1]
    versions_of_lineage = (lineage.ledger or {}).get("versions") or [{}]
    first = int(versions_of_lineage[0].get("version", 0))
    gone = {
        w.version_id: w
        for w in db.scalars(select(VersionWithdrawal).where(VersionWithdrawal.model_id == model.id))
        if w.in_force(now)
    }
    doomed: list[Doomed] = []
    versions = list(db.scalars(select(ModelVersion).where(ModelVersion.model_id == model.id)))
    for v in versions:
        w = gone.get(v.id)
        if w is None:
            continue
        requests = tuple(w.request_ids or ())
        if v.number != first:  # the current lineage's first version is its metrics' reference
            doomed.append(Doomed(v.weights_key, "withdrawn-version", _run_of_key(v.weights_key),
                                 v.weights_sha256, v.weights_size, v.number, requests))
        if v.report_key:
            doomed.append(Doomed(v.report_key, "withdrawn-version", _run_of_key(v.report_key),
                                 v.report_sha256, v.report_size, v.number, requests))
    subtracted = (lineage.ledger or {}).get("subtracted_steps") or []
    done = db.scalars(
        select(PurgedBlob.key).where(
            PurgedBlob.model_id == model.id,
            PurgedBlob.run_id == lineage.run_id,
            PurgedBlob.reason == "subtracted-step",
        )
    ).all()
    if subtracted and len(done) < len(subtracted):  # read updates.json only when needed
        blobs = open_artifact(store, lineage.run_id).update_blobs
        by_step = _requests_by_step(db, model.id, lineage.run_id)
        for step in subtracted:
            if step < len(blobs):
                p = blobs[step]
                doomed.append(Doomed(p.key, "subtracted-step", lineage.run_id, p.sha256, p.size,
                                     request_ids=tuple(by_step.get(step, ()))))
    checkpoints = (lineage.ledger or {}).get("checkpoints")
    if checkpoints and (not for_deletion or _lineage_lock_now(db, lineage.id)):
        referenced = {p["key"] for pointers in checkpoints.values() for p in pointers}
        for key in store.list(f"{run_prefix(lineage.run_id)}/shards/"):
            if key.endswith(".safetensors") and key not in referenced:
                doomed.append(Doomed(key, "superseded-checkpoint", lineage.run_id))
    older = [v for v in versions if v.number < first]
    if all(v.id in gone for v in older):
        held = tuple(sorted({r for v in older for r in (gone[v.id].request_ids or ())}))
        for run in runs[:-1]:
            prefix = run_prefix(run.run_id)
            if not store.exists(f"{prefix}/run.json"):
                continue  # purged already
            keys = [k for k in store.list(f"{prefix}/") if k != f"{prefix}/run.json"]
            for key in [*keys, f"{prefix}/run.json"]:  # run.json last: resumable
                doomed.append(Doomed(key, "replaced-lineage", run.run_id, request_ids=held))
    return doomed


def _lineage_lock_now(db: Session, run_pk: int) -> bool:
    """Take the lineage lock (the run row, ``FOR UPDATE``) unless an erasure holds it."""
    return (
        db.scalar(
            select(TrainingRun.id).where(TrainingRun.id == run_pk).with_for_update(skip_locked=True)
        )
        is not None
    )


def _requests_by_step(db: Session, model_id: int, run_id: str) -> dict[int, list[str]]:
    """Step -> the requests whose jobs subtracted it on lineage ``run_id``."""
    out: dict[int, list[str]] = {}
    for request_id, details in db.execute(
        select(RequestJob.request_id, RequestJob.details).where(
            RequestJob.model_id == model_id, RequestJob.status == JobState.COMPLETED
        )
    ):
        if (details or {}).get("run_id") != run_id:
            continue
        for step in (details or {}).get("subtracted_steps") or ():
            out.setdefault(int(step), []).append(request_id)
    return out


def deleted_for(*, db: Session, request_id: str, model_ids: list[int]) -> list[PurgedBlob]:
    """The blobs the purge deleted that held ``request_id``'s data (on those models)."""
    if not model_ids:
        return []
    return [
        row
        for row in db.scalars(
            select(PurgedBlob).where(PurgedBlob.model_id.in_(model_ids)).order_by(PurgedBlob.id)
        )
        if request_id in (row.request_ids or [])
    ]


def _stat(store: BlobStore, d: Doomed) -> tuple[str | None, int | None]:
    if d.sha256 is not None:
        return d.sha256, d.size
    try:
        ref = store.stat(d.key)
    except BlobNotFoundError:
        return None, None
    return ref.sha256, ref.size


@dataclass
class ModelPurge:
    """What one sweep did to one model: the blobs deleted (recorded) and those it could not."""

    rows: list[PurgedBlob] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)
    skipped: int = 0  # not tried: the store was found unavailable earlier this round


def purge_model(
    *,
    db: Session,
    model: Model,
    now: datetime | None = None,
    store: BlobStore | None = None,
    retry: RetryPolicy = DEFAULT_RETRY,
) -> ModelPurge:
    """Delete what :func:`plan` names and is not recorded yet; record and audit it, in the
    caller's transaction (commit after: a blob is deleted before its row is written). A
    delete that fails after its retries is left out of the records and reported in a
    ``purge.failed`` event; once the store is unavailable the rest waits for the next round."""
    now = now or utcnow()
    store = store or registry.store_of(db=db, model=model)
    recorded = set(
        db.scalars(select(PurgedBlob.key).where(PurgedBlob.store_url == store.url, PurgedBlob.model_id == model.id))
    )
    done = ModelPurge()
    seen: set[str] = set()
    down = False  # the store failed even after retries: the rest waits for the next round
    failed_runs: set[str] = set()  # a replaced lineage keeps its run.json while a blob failed
    for d in plan(db=db, model=model, store=store, now=now):
        if d.key in recorded or d.key in seen:
            continue
        seen.add(d.key)
        if down or (d.key.endswith("/run.json") and d.run_id in failed_runs):
            done.skipped += 1
            continue
        try:
            sha256, size = _stat(store, d)
            deletion.delete(store, d.key, retry=retry)  # idempotent
        except BlobStoreError as exc:
            done.failures.append(Failure(d.key, d.reason, str(exc)))
            down = isinstance(exc, BlobStoreUnavailableError)
            failed_runs.add(d.run_id)
            continue
        row = PurgedBlob(
            store_url=store.url, key=d.key, sha256=sha256, size=size, reason=d.reason,
            model_id=model.id, run_id=d.run_id, version=d.version,
            request_ids=list(d.request_ids), deleted_at=now,
        )
        db.add(row)
        done.rows.append(row)
    if done.rows:
        _audit_deleted(db, model, store, done.rows)
    if done.failures:
        record_failures(db, done.failures, store=store.url, model=model, skipped=done.skipped)
    db.flush()
    return done


def _audit_deleted(db: Session, model: Model, store: BlobStore, rows: list[PurgedBlob]) -> None:
    counts: dict[str, int] = {}
    for r in rows:
        counts[r.reason] = counts.get(r.reason, 0) + 1
    audit(
        db,
        "blobs.deleted",
        model_name=model.name,
        tenant=model.tenant,
        actor="purge",
        payload={
            "store": store.url,
            "counts": counts,
            "bytes": sum(r.size or 0 for r in rows),
            "blobs": [
                {"key": r.key, "sha256": r.sha256, "size": r.size, "reason": r.reason}
                for r in rows
            ],
        },
    )


def record_failures(
    db: Session,
    failures: list[Failure],
    *,
    store: str,
    model: Model | None = None,
    dataset: Dataset | None = None,
    skipped: int = 0,
) -> None:
    """One ``purge.failed`` event (each key, reason and error; how many were not tried) and
    the failure counter, in the caller's transaction."""
    for f in failures:
        count_purge_failure(reason=f.reason)
        log.warning("purge could not delete %s from %s (%s), retried next round: %s",
                    f.key, store, f.reason, f.error)
    owner = model if model is not None else dataset
    audit(
        db,
        FAILED,
        model_name=model.name if model is not None else None,
        tenant=getattr(owner, "tenant", None),
        actor="purge",
        payload={
            "store": store,
            "dataset": dataset.name if dataset is not None else None,
            "failed": [f.as_json() for f in failures],
            "not_tried": skipped,
        },
    )


def sweep(
    *,
    session_factory: SessionFactory,
    now: datetime | None = None,
    store_of: StoreOf = _registry_store,
    retry: RetryPolicy = DEFAULT_RETRY,
) -> int:
    """One purge round over every model, then every upload, each in its own transaction;
    how many blobs (and uploads) went. A failure is recorded (``purge.failed``) and left to
    the next round; the others go on. ``store_of`` picks a model's store (tests wrap it)."""
    with session_factory() as db:
        model_ids = list(db.scalars(select(Model.id).order_by(Model.id)))
        dataset_ids = [d.id for d in db.scalars(select(Dataset).order_by(Dataset.id)) if uploads.upload_info(d)]
    total = 0
    for model_id in model_ids:
        total += _sweep_model(session_factory, model_id, now, store_of, retry)
    for dataset_id in dataset_ids:
        total += _sweep_upload(session_factory, dataset_id, now)
    return total


def _sweep_model(
    session_factory: SessionFactory, model_id: int, now: datetime | None, store_of: StoreOf, retry: RetryPolicy
) -> int:
    with session_factory() as db:
        model = db.get(Model, model_id)
        if model is None:
            return 0
        name = model.name
        try:
            store = store_of(db, model)
            done = purge_model(db=db, model=model, now=now, store=store, retry=retry)
            db.commit()
        except Exception as exc:  # noqa: BLE001 - planning failed (store or database): next round
            db.rollback()
            _record_in_own_transaction(
                session_factory, Failure(f"model {name}", "plan", str(exc)), model_id=model_id
            )
            return 0
    if done.rows:
        log.info("purged %d blob(s) of %s", len(done.rows), name)
    return len(done.rows)


def _sweep_upload(session_factory: SessionFactory, dataset_id: int, now: datetime | None) -> int:
    try:
        rewrite = uploads.purge(session_factory=session_factory, dataset_id=dataset_id, now=now)
    except Exception as exc:  # noqa: BLE001 - an unreadable or changed upload: next round
        with session_factory() as db:
            dataset = db.get(Dataset, dataset_id)
            key = dataset.source if dataset is not None else f"dataset {dataset_id}"
        _record_in_own_transaction(
            session_factory, Failure(key, uploads.REASON, str(exc)), dataset_id=dataset_id
        )
        return 0
    if rewrite is None:
        return 0
    log.info("removed %d erased sample(s) from upload %s", rewrite.samples, rewrite.payload["path"])
    return 1


def _record_in_own_transaction(
    session_factory: SessionFactory, failure: Failure, *, model_id: int | None = None, dataset_id: int | None = None
) -> None:
    """A failure outside a model's deletions (its plan, an upload), recorded on its own."""
    try:
        with session_factory() as db:
            model = db.get(Model, model_id) if model_id is not None else None
            dataset = db.get(Dataset, dataset_id) if dataset_id is not None else None
            record_failures(db, [failure], store="uploads" if dataset is not None else "", model=model, dataset=dataset)
            db.commit()
    except Exception as exc:  # noqa: BLE001 - the database itself is down: the log must do
        log.warning("purge failure of %s not recorded (%s): %s", failure.key, exc, failure.error)
