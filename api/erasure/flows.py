"""Processing an erasure request's jobs: claim, unlearn, evaluate, publish, tombstone.

One job is the work of one request on one model. :func:`process_job` runs it in three kinds
of transaction:

1. **claim** (short): lock the request row, then the job row (``FOR UPDATE SKIP LOCKED`` on
   PostgreSQL, so two workers never take the same job); ``queued -> running`` for the job
   and, for its first job, the request; audit ``request.running`` / ``job.started``.
2. **work** (long): lock the model's :class:`TrainingRun` row ``FOR UPDATE`` — this
   serialises every change to a model lineage — and run
   :func:`unlearning_core.pipeline.apply_method` with the lineage ledger kept in that row
   (:class:`DbLedger`), then :func:`unlearning_core.pipeline.report` for the metrics. The
   new weights blob is written by then, but nothing counts until this transaction commits:
   the ledger change, the :class:`ModelVersion` row, the job's result and (for the last
   job) the tombstones and the request's completion commit together, or not at all.
   Progress (``job.progress`` / ``job.step``) is committed from a separate short session
   so polling clients see it while the work transaction is open.
3. **fail** (short, on any exception): job and request ``failed`` with a readable message,
   audited. ``POST /admin/requests/{id}/retry`` queues the failed jobs again. A Celery worker
   passes ``retry_transient=True`` while it has retries left: a transient fault (database or
   blob store unreachable, :func:`api.errors.is_transient`) then hands the job back
   (``queued``, audited ``job.retrying``) and re-raises, and the task retries with backoff.

While a job runs, a heartbeat thread refreshes ``heartbeat_at`` (:mod:`api.database.heartbeat`).
A ``running`` job whose heartbeat is older than ``LETHE_JOB_STALE_SECONDS`` was abandoned by
a dead worker: :func:`claim` takes it again (``attempts`` + 1) and
:func:`requeue_abandoned` (the dispatcher) puts it back in the queue.

Exactly once: a job is only claimed while ``queued`` (or abandoned) with no version, and its
result is only recorded if, under the row lock, it is still ``running`` in the attempt that
claimed it.
The ledger (in the same transaction as the version row) makes a retry after a crash redo
the same subtraction rather than subtract a batch twice. When every batch of a forget set
was already subtracted (a repeated request), nothing is published: the job is linked to
the current head version.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import torch
from sqlalchemy import Select, func, select, update
from sqlalchemy.orm import Session

from api.audit.service import append as audit_append
from api.database.core import utcnow
from api.database.heartbeat import Heartbeat, stale_before
from api.datasets.models import Sample
from api.erasure import states
from api.erasure.models import ErasureRequest, RequestJob
from api.erasure.states import JobStatus, RequestStatus
from api.errors import is_transient
from api.observability.context import log_context
from api.observability.metrics import observe_job, observe_unlearn
from api.registry.models import Model, ModelVersion, TrainingRun
from api.registry.reports import publish_report
from unlearning_core.errors import BlobNotFoundError, LetheError, RunError
from unlearning_core.forget import ForgetSpec
from unlearning_core.pipeline import MethodRun, apply_method, report
from unlearning_core.runs.artifact import open_artifact, run_prefix
from unlearning_core.runs.ledger import Ledger, VersionEntry
from unlearning_core.store import BlobStore

log = logging.getLogger("lethe.erasure")

SessionFactory = Callable[[], Session]
WORKER = "worker"

#: Keys of :func:`unlearning_core.pipeline.report` not kept in a version's metrics: they
#: repeat the version row (number, weights, method) or name the run.
NOT_METRICS = frozenset({"run_id", "method", "version", "new_version", "weights", "weights_sha256"})


class DbLedger:
    """The lineage ledger in ``training_runs.ledger`` (:class:`LedgerStore` protocol).

    ``save`` only assigns the column: the caller's transaction commits it together with
    the version row it belongs to. A row without a ledger (a run adopted from the blob
    store) starts from the run's ``ledger.json``.
    """

    def __init__(
        self, session: Session, run: TrainingRun, *, store: BlobStore | None = None
    ) -> None:
        self.session = session
        self.run = run
        self.store = store

    def load(self) -> Ledger:
        if self.run.ledger is None:
            if self.store is None:
                raise RunError(f"training run {self.run.run_id!r} has no ledger in the database")
            return Ledger.model_validate(
                self.store.get_json(f"{run_prefix(self.run.run_id)}/ledger.json")
            )
        return Ledger.model_validate(self.run.ledger)

    def save(self, ledger: Ledger) -> None:
        self.run.ledger = ledger.model_dump(mode="json")  # a fresh dict: the ORM sees the change


@dataclass(frozen=True)
class Claim:
    """What a worker took: enough to do the job and to prove it still owns it at the end."""

    job_id: int
    request_id: str
    attempt: int
    model_id: int
    model_name: str
    method: str
    sample_ids: tuple[str, ...]
    #: ``X-Request-ID`` of the HTTP request that filed the erasure request (log context).
    http_request_id: str | None = None


def error_text(exc: BaseException) -> str:
    """One readable line for the job and the request."""
    if isinstance(exc, LetheError):
        text = str(exc)
    else:
        text = f"internal error ({type(exc).__name__}: {exc})"
    return text[:1900]


# ---------------------------------------------------------------------------------------
# Finding and claiming
# ---------------------------------------------------------------------------------------


def _workable_queued_jobs() -> Select[tuple[int]]:
    """Ids of queued jobs whose request may be worked on, oldest request first: the one
    definition the embedded worker's pick and the dispatcher's re-enqueue share."""
    return (
        select(RequestJob.id)
        .join(ErasureRequest, ErasureRequest.id == RequestJob.request_id)
        .where(
            RequestJob.status == JobStatus.QUEUED,
            ErasureRequest.status.in_([s.value for s in states.WORKABLE]),
        )
        .order_by(ErasureRequest.received_at, RequestJob.id)
    )


def next_queued_job(
    *, session_factory: SessionFactory, exclude: set[int] | frozenset[int] = frozenset()
) -> int | None:
    """The oldest queued job of a workable request (received first, then job order)."""
    with session_factory() as db:
        query = _workable_queued_jobs().limit(1)
        if exclude:
            query = query.where(RequestJob.id.not_in(sorted(exclude)))
        return db.scalar(query)


def _lock_request(
    db: Session, request_id: str, *, skip_locked: bool = False
) -> ErasureRequest | None:
    return db.scalar(
        select(ErasureRequest)
        .where(ErasureRequest.id == request_id)
        .with_for_update(skip_locked=skip_locked)
        .execution_options(populate_existing=True)
    )


def _lock_job(db: Session, job_id: int, *, skip_locked: bool = False) -> RequestJob | None:
    return db.scalar(
        select(RequestJob)
        .where(RequestJob.id == job_id)
        .with_for_update(skip_locked=skip_locked)
        .execution_options(populate_existing=True)
    )


def _lock_held(db: Session, c: Claim) -> tuple[ErasureRequest, RequestJob] | None:
    """Lock the claim's request and job; ``None`` unless the job is still running in the
    attempt that claimed it (a later attempt, or a finished job, owns the outcome now)."""
    request = _lock_request(db, c.request_id)
    job = _lock_job(db, c.job_id)
    if request is None or job is None or job.status != JobStatus.RUNNING or job.attempts != c.attempt:
        return None
    return request, job


def _abandoned(job: RequestJob) -> bool:
    """A running job whose worker stopped beating (or never beat) for the stale period."""
    last = job.heartbeat_at or job.started_at
    return last is None or last < stale_before()


def claim(
    *, session_factory: SessionFactory, job_id: int, device: torch.device | str
) -> Claim | None:
    """Take ``job_id`` if it is queued (or running but abandoned: its heartbeat is stale)
    and its request workable; ``None`` otherwise.

    Locks request then job (the order every writer of both uses), skipping rows another
    transaction holds, and commits ``running`` so the claim is visible at once.
    """
    with session_factory() as db:
        request_id = db.scalar(select(RequestJob.request_id).where(RequestJob.id == job_id))
        if request_id is None:
            return None
        request = _lock_request(db, request_id, skip_locked=True)
        if request is None or request.status not in states.WORKABLE:
            return None
        job = _lock_job(db, job_id, skip_locked=True)
        if job is None:
            return None
        resumed = job.status == JobStatus.RUNNING and _abandoned(job)
        if job.status != JobStatus.QUEUED and not resumed:
            return None
        model = db.get(Model, job.model_id)
        assert model is not None
        if job.version_id is not None:  # a result is already recorded: never publish twice
            log.warning(
                "job %s is queued but already answered by version row %s; not running it",
                job.id,
                job.version_id,
            )
            return None
        if request.status == RequestStatus.QUEUED:
            states.transition(db, request, RequestStatus.RUNNING, actor=WORKER)
        job.status = JobStatus.RUNNING
        job.attempts = (job.attempts or 0) + 1
        job.progress, job.step = 0.05, "claimed"
        job.error = None
        job.device = str(device)
        job.started_at, job.finished_at = utcnow(), None
        job.heartbeat_at = job.started_at
        payload: dict[str, Any] = {
            "job_id": job.id,
            "attempt": job.attempts,
            "method": job.method,
            "device": str(device),
            "samples": len(job.sample_ids or []),
        }
        if resumed:
            payload["resumed"] = "abandoned by a worker that stopped beating"
            log.warning(
                "job %s was abandoned by its worker; resuming it (attempt %s)", job.id, job.attempts
            )
        audit_append(
            db,
            "job.started",
            request_id=request.id,
            model_name=model.name,
            actor=WORKER,
            payload=payload,
        )
        db.commit()
        return Claim(
            job_id=job.id,
            request_id=request.id,
            attempt=job.attempts,
            model_id=model.id,
            model_name=model.name,
            method=job.method,
            sample_ids=tuple(job.sample_ids or ()),
            http_request_id=request.http_request_id,
        )


# ---------------------------------------------------------------------------------------
# Doing the work
# ---------------------------------------------------------------------------------------


def _progress(session_factory: SessionFactory, c: Claim, progress: float, step: str) -> None:
    """Commit the job's progress from its own short transaction (status polls see it)."""
    with session_factory() as db:
        db.execute(
            update(RequestJob)
            .where(
                RequestJob.id == c.job_id,
                RequestJob.status == JobStatus.RUNNING,
                RequestJob.attempts == c.attempt,
            )
            .values(progress=progress, step=step, heartbeat_at=utcnow())
            .execution_options(synchronize_session=False)
        )
        db.commit()


def _beat(session_factory: SessionFactory, c: Claim) -> bool:
    """Refresh the heartbeat of the job while this attempt holds it; False once it does not."""
    with session_factory() as db:
        result = db.execute(
            update(RequestJob)
            .where(
                RequestJob.id == c.job_id,
                RequestJob.status == JobStatus.RUNNING,
                RequestJob.attempts == c.attempt,
            )
            .values(heartbeat_at=utcnow())
            .execution_options(synchronize_session=False)
        )
        db.commit()
        return bool(result.rowcount)  # type: ignore[attr-defined]


def jsonable(value: Any) -> Any:
    """Plain JSON (numpy scalars to Python, NaN/inf to null: PostgreSQL's JSON refuses them)."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if hasattr(value, "item") and callable(value.item):  # numpy / torch scalars
        try:
            value = value.item()
        except (TypeError, ValueError):
            return str(value)
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def _metrics(full: dict[str, Any]) -> dict[str, Any]:
    return jsonable({k: v for k, v in full.items() if k not in NOT_METRICS})


def _new_version_row(model_id: int, entry: VersionEntry, *, metrics: dict[str, Any], **extra: Any) -> ModelVersion:
    """A version row as the lineage ledger's entry describes it (rows are written once)."""
    return ModelVersion(
        model_id=model_id,
        number=entry.version,
        parent_number=entry.parent,
        method=entry.method,
        weights_key=entry.weights.key,
        weights_sha256=entry.weights.sha256,
        weights_size=entry.weights.size,
        metrics=metrics,
        created_at=entry.created_at,
        **extra,
    )


def _version_row(db: Session, model_id: int, entry: VersionEntry) -> ModelVersion:
    """The row of an existing ledger version (created if a lineage predates its row)."""
    row = db.scalar(
        select(ModelVersion).where(
            ModelVersion.model_id == model_id, ModelVersion.number == entry.version
        )
    )
    if row is None:
        row = _new_version_row(model_id, entry, metrics={})
        db.add(row)
        db.flush()
    return row


def _tombstone(db: Session, store: BlobStore, request: ErasureRequest) -> int:
    """Mark the request's samples erased in every affected dataset (first erasure wins) and
    delete their raw blobs if Lethe stored them; returns how many samples it newly erased."""
    now = utcnow()
    erased = 0
    jobs = db.execute(
        select(RequestJob.sample_ids, Model.dataset_id)
        .join(Model, Model.id == RequestJob.model_id)
        .where(RequestJob.request_id == request.id)
    ).all()
    by_dataset: dict[int, set[str]] = {}
    for sample_ids, dataset_id in jobs:
        by_dataset.setdefault(dataset_id, set()).update(sample_ids or ())
    for dataset_id, sample_ids in by_dataset.items():
        ids = sorted(sample_ids)
        for start in range(0, len(ids), 5000):
            chunk = ids[start : start + 5000]
            for sample in db.scalars(
                select(Sample).where(
                    Sample.dataset_id == dataset_id,
                    Sample.sample_id.in_(chunk),
                    Sample.raw_blob_key.is_not(None),
                )
            ):
                store.delete(sample.raw_blob_key)  # idempotent; before commit, so never left behind
                sample.raw_blob_key = None
            result = db.execute(
                update(Sample)
                .where(
                    Sample.dataset_id == dataset_id,
                    Sample.sample_id.in_(chunk),
                    Sample.erased_at.is_(None),
                )
                .values(erased_at=now, erased_by_request=request.id)
                .execution_options(synchronize_session=False)
            )
            erased += int(result.rowcount or 0)  # type: ignore[attr-defined]
    return erased


def _record(
    db: Session,
    store: BlobStore,
    c: Claim,
    *,
    run: TrainingRun,
    done: MethodRun | None,
    metrics: dict[str, Any],
    details: dict[str, Any],
) -> bool:
    """In the work transaction: the version row (or the head's), the job's result, and the
    request's completion if this was its last job. False if the claim was lost."""
    held = _lock_held(db, c)
    if held is None or held[1].version_id:
        log.warning(
            "job %s (attempt %s) is no longer ours; discarding its result", c.job_id, c.attempt
        )
        return False
    request, job = held
    changed = done is not None and done.outcome.changed
    if changed:
        assert done is not None and done.version is not None
        entry = done.version
        published = audit_append(
            db,
            "version.published",
            request_id=c.request_id,
            model_name=c.model_name,
            actor=WORKER,
            payload={
                "version": entry.version,
                "parent": entry.parent,
                "method": entry.method,
                "weights_key": entry.weights.key,
                "weights_sha256": entry.weights.sha256,
                "weights_size": entry.weights.size,
                "metrics": metrics,
            },
        )
        # The report names the event above (its place in the chain), so it comes after it
        # and before the row, which is written once, with the report's key and sha256.
        rendered = publish_report(
            store=store,
            done=done,
            ledger=DbLedger(db, run, store=store).load(),
            model_name=c.model_name,
            request_id=c.request_id,
            subject_id=request.subject_id,
            metrics=metrics,
            audit=published,
        )
        ref = rendered.ref
        version = _new_version_row(
            c.model_id, entry, metrics=metrics,
            report_key=ref.key if ref else None,
            report_sha256=ref.sha256 if ref else None,
            report_size=ref.size if ref else None,
            report_tenant=request.tenant if ref else None,
        )
        db.add(version)
        db.flush()
    else:
        head = (
            done.version
            if done is not None and done.version is not None
            else DbLedger(db, run, store=store).load().head
        )
        version = _version_row(db, c.model_id, head)
    job.version_id = version.id
    job.status = JobStatus.COMPLETED
    job.progress, job.step = 1.0, "done"
    job.details = details
    job.finished_at = utcnow()
    audit_append(
        db,
        "job.completed",
        request_id=c.request_id,
        model_name=c.model_name,
        actor=WORKER,
        payload={
            "job_id": c.job_id,
            "version": version.number,
            "new_version": changed,
            "batches_subtracted": details.get("batches_subtracted"),
        },
    )
    db.flush()
    pending = db.scalar(
        select(RequestJob.id)
        .where(RequestJob.request_id == c.request_id, RequestJob.status != JobStatus.COMPLETED)
        .limit(1)
    )
    if pending is None and request.status == RequestStatus.RUNNING:
        erased = _tombstone(db, store, request)
        versions = [
            {"model": name, "version": number}
            for name, number in db.execute(
                select(Model.name, ModelVersion.number)
                .join(RequestJob, RequestJob.version_id == ModelVersion.id)
                .join(Model, Model.id == ModelVersion.model_id)
                .where(RequestJob.request_id == c.request_id)
                .order_by(RequestJob.id)
            )
        ]
        request.error = None
        states.transition(
            db,
            request,
            RequestStatus.COMPLETED,
            actor=WORKER,
            payload={"samples_erased": erased, "versions": versions},
        )
    return True


def _work(
    *, session_factory: SessionFactory, store: BlobStore, c: Claim, device: torch.device
) -> bool:
    """The work transaction; False if the result was discarded (the claim was lost)."""
    with session_factory() as db, db.no_autoflush:
        asked = time.perf_counter()
        # The lineage lock: every change to this model's versions and ledger waits here, so
        # concurrent requests against one model are applied one after another.
        run = db.scalar(
            select(TrainingRun)
            .where(TrainingRun.model_id == c.model_id, TrainingRun.status == "completed")
            .order_by(TrainingRun.id.desc())
            .limit(1)
            .with_for_update()
        )
        if run is None:
            raise RunError(f"model {c.model_name!r} has no completed training run to unlearn from")
        started = time.perf_counter()
        artifact = open_artifact(store, run.run_id)
        in_run = set(artifact.sample_table["sample_ids"])
        forget = tuple(s for s in c.sample_ids if s in in_run)
        base: dict[str, Any] = {
            "run_id": run.run_id,
            "forget_samples": len(forget),
            "samples_not_in_run": len(c.sample_ids) - len(forget),
            "device": str(device),
            "lineage_wait_seconds": round(started - asked, 3),
        }
        if not forget:  # the dataset holds them, this run never trained on them: nothing to undo
            _progress(session_factory, c, 0.9, "publishing")
            recorded = _record(
                db,
                store,
                c,
                run=run,
                done=None,
                metrics={},
                details={
                    **base,
                    "batches_subtracted": 0,
                    "job_seconds": round(time.perf_counter() - started, 3),
                },
            )
        else:
            _progress(session_factory, c, 0.1, "unlearning")
            done = apply_method(
                store,
                run_id=run.run_id,
                method=c.method,
                forget=ForgetSpec(sample_ids=forget),
                device=device,
                publish=True,
                ledger_store=DbLedger(db, run, store=store),
            )
            changed = done.outcome.changed
            _progress(session_factory, c, 0.5, "evaluating" if changed else "publishing")
            full = report(done, evaluate=changed)
            _progress(session_factory, c, 0.9, "publishing")
            details = {
                **base,
                "unlearn_seconds": done.outcome.unlearn_seconds,
                "recovery_seconds": done.outcome.recovery_seconds,
                **done.outcome.details,
                "new_version": changed,
                "job_seconds": round(time.perf_counter() - started, 3),
            }
            recorded = _record(
                db, store, c, run=run, done=done, metrics=_metrics(full), details=jsonable(details)
            )
        if recorded:
            db.commit()
            if forget:
                observe_unlearn(method=c.method, seconds=done.outcome.unlearn_seconds)
        else:
            db.rollback()
        return recorded


def _fail(*, session_factory: SessionFactory, c: Claim, error: str) -> None:
    with session_factory() as db:
        held = _lock_held(db, c)
        if held is None:
            return
        request, job = held
        job.status = JobStatus.FAILED
        job.error = error
        job.step = "failed"
        job.finished_at = utcnow()
        audit_append(
            db,
            "job.failed",
            request_id=c.request_id,
            model_name=c.model_name,
            actor=WORKER,
            payload={"job_id": c.job_id, "attempt": c.attempt, "error": error},
        )
        if request.status == RequestStatus.RUNNING:
            request.error = f"model {c.model_name!r}: {error}"[:2000]
            states.transition(db, request, RequestStatus.FAILED, actor=WORKER, reason=request.error)
        db.commit()


def _release(*, session_factory: SessionFactory, c: Claim, error: str) -> None:
    """Hand a job hit by a transient fault back to the queue (a retry is scheduled)."""
    with session_factory() as db:
        held = _lock_held(db, c)
        if held is None:
            return
        request, job = held
        job.status = JobStatus.QUEUED
        job.progress, job.step = 0.0, "retrying after a transient fault"
        job.error = error
        job.heartbeat_at = utcnow()  # the dispatcher leaves it to the scheduled retry a while
        audit_append(
            db,
            "job.retrying",
            request_id=c.request_id,
            model_name=c.model_name,
            actor=WORKER,
            payload={"job_id": c.job_id, "attempt": c.attempt, "error": error},
        )
        db.commit()


def run_claimed(
    *,
    session_factory: SessionFactory,
    store: BlobStore,
    claim: Claim,
    device: torch.device,
    retry_transient: bool = False,
) -> bool:
    """Do a claimed job; True if it completed (this attempt's result was recorded). See
    :func:`_run`."""
    return (
        _run(
            session_factory=session_factory,
            store=store,
            c=claim,
            device=device,
            retry_transient=retry_transient,
        )
        == "completed"
    )


def _run(
    *,
    session_factory: SessionFactory,
    store: BlobStore,
    c: Claim,
    device: torch.device,
    retry_transient: bool = False,
) -> str:
    """:func:`_run_job` with the request's ids bound to every log line it writes (the HTTP
    request id stored with the request, so an API line and the worker's share it) and its
    duration observed as ``lethe_job_duration_seconds``."""
    started = time.perf_counter()
    outcome = "retrying"  # what an exception out of _run_job means
    with log_context(
        request_id=c.http_request_id, erasure_request_id=c.request_id, job_id=c.job_id, model=c.model_name
    ):
        try:
            outcome = _run_job(
                session_factory=session_factory, store=store, c=c, device=device, retry_transient=retry_transient
            )
        finally:
            observe_job(method=c.method, outcome=outcome, seconds=time.perf_counter() - started)
    return outcome


def _run_job(
    *,
    session_factory: SessionFactory,
    store: BlobStore,
    c: Claim,
    device: torch.device,
    retry_transient: bool = False,
) -> str:
    """Do a claimed job: ``completed``, ``failed``, or ``discarded`` (another attempt took
    the job meanwhile). Any exception fails it (readably), except a transient fault with
    ``retry_transient``: the job is handed back to the queue and the exception re-raised
    for the caller (a Celery task) to retry with backoff."""
    try:
        with Heartbeat(lambda: _beat(session_factory, c), name=f"job-{c.job_id}"):
            recorded = _work(session_factory=session_factory, store=store, c=c, device=device)
    except Exception as exc:  # the job's failure, recorded on it; the worker goes on
        if retry_transient and is_transient(exc):
            log.warning(
                "erasure job %s on %s hit a transient fault, will retry: %s",
                c.job_id,
                c.model_name,
                exc,
            )
            try:
                _release(session_factory=session_factory, c=c, error=error_text(exc))
            except Exception as again:  # noqa: BLE001 - the database is away too
                log.warning(
                    "could not hand job %s back (%s); it is resumed once its heartbeat is stale",
                    c.job_id,
                    again,
                )
            raise
        if isinstance(exc, LetheError) and not isinstance(exc, BlobNotFoundError):
            log.warning("erasure job %s on %s failed: %s", c.job_id, c.model_name, exc)
        else:
            log.exception("erasure job %s on %s failed", c.job_id, c.model_name)
        _fail(session_factory=session_factory, c=c, error=error_text(exc))
        return "failed"
    if not recorded:
        return "discarded"
    log.info("erasure job %s on %s done (request %s)", c.job_id, c.model_name, c.request_id)
    return "completed"


def process_job(
    *,
    session_factory: SessionFactory,
    store: BlobStore,
    job_id: int,
    device: torch.device,
    retry_transient: bool = False,
) -> str:
    """Claim ``job_id`` and do it: ``"completed"``, ``"failed"`` or ``"discarded"`` (see
    :func:`_run`); ``"skipped"`` (quietly) if another worker has it, it is done, or it is
    not workable."""
    taken = claim(session_factory=session_factory, job_id=job_id, device=device)
    if taken is None:
        return "skipped"
    return _run(
        session_factory=session_factory,
        store=store,
        c=taken,
        device=device,
        retry_transient=retry_transient,
    )


def requeue_abandoned(*, session_factory: SessionFactory) -> list[int]:
    """Put ``running`` jobs whose heartbeat is stale (their worker died) back in the queue,
    audited ``job.requeued``; returns their ids. Safe while other workers run: a live job
    beats, and rows another transaction holds are skipped."""
    cutoff = stale_before()
    with session_factory() as db:
        candidates = db.execute(
            select(RequestJob.id, RequestJob.request_id).where(
                RequestJob.status == JobStatus.RUNNING,
                func.coalesce(RequestJob.heartbeat_at, RequestJob.started_at) < cutoff,
            )
        ).all()
        moved: list[int] = []
        for job_id, request_id in candidates:
            request = _lock_request(db, request_id, skip_locked=True)
            job = _lock_job(db, job_id, skip_locked=True) if request is not None else None
            if (
                request is None
                or job is None
                or job.status != JobStatus.RUNNING
                or not _abandoned(job)
            ):
                continue
            last = job.heartbeat_at or job.started_at
            job.status, job.progress = JobStatus.QUEUED, 0.0
            job.step = "re-queued: its worker stopped"
            job.heartbeat_at = utcnow()
            model_name = db.scalar(select(Model.name).where(Model.id == job.model_id))
            audit_append(
                db,
                "job.requeued",
                request_id=request_id,
                model_name=model_name,
                actor="dispatcher",
                payload={
                    "job_id": job_id,
                    "attempt": job.attempts,
                    "reason": "no heartbeat since "
                    + (last.isoformat() if last is not None else "the claim"),
                },
            )
            moved.append(job_id)
        db.commit()
        return moved


def pending_job_ids(
    *, session_factory: SessionFactory, changed_before: datetime | None = None
) -> list[int]:
    """Queued jobs of workable requests, oldest request first: what a dispatcher
    (re)enqueues. Leaves out jobs a worker handed back recently (their retry is scheduled)
    and, with ``changed_before``, requests changed since then (their message is on its way)."""
    cutoff = stale_before()
    with session_factory() as db:
        query = _workable_queued_jobs().where(
            (RequestJob.heartbeat_at.is_(None)) | (RequestJob.heartbeat_at < cutoff)
        )
        if changed_before is not None:
            query = query.where(ErasureRequest.updated_at < changed_before)
        return list(db.scalars(query))


def queued_job_ids(*, db: Session, request_id: str) -> list[int]:
    """The request's queued jobs (to enqueue after filing, approval or retry)."""
    return list(
        db.scalars(
            select(RequestJob.id)
            .where(RequestJob.request_id == request_id, RequestJob.status == JobStatus.QUEUED)
            .order_by(RequestJob.id)
        )
    )


def requeue_interrupted(*, session_factory: SessionFactory) -> int:
    """Re-queue jobs left ``running`` by a worker that died (their requests go back to
    ``queued``); returns how many jobs. Only for the start of a deployment whose worker is
    the only one (the embedded default): elsewhere a running job may be alive."""
    with session_factory() as db:
        request_ids = list(
            db.scalars(
                select(RequestJob.request_id)
                .where(RequestJob.status == JobStatus.RUNNING)
                .distinct()
            )
        )
        moved = 0
        for request_id in request_ids:
            request = _lock_request(db, request_id)
            assert request is not None
            jobs = list(
                db.scalars(
                    select(RequestJob)
                    .where(
                        RequestJob.request_id == request_id, RequestJob.status == JobStatus.RUNNING
                    )
                    .with_for_update()
                )
            )
            for job in jobs:
                job.status, job.progress, job.step = JobStatus.QUEUED, 0.0, None
            moved += len(jobs)
            if request.status == RequestStatus.RUNNING:
                states.transition(
                    db,
                    request,
                    RequestStatus.QUEUED,
                    actor=WORKER,
                    reason="worker restarted",
                    payload={"jobs": len(jobs)},
                )
        db.commit()
        return moved
