"""Processing an erasure request's jobs: claim, unlearn, evaluate, publish, tombstone.

One job is the work of one request on one model, a row of ``request_jobs`` under the job
lease (:mod:`api.jobs.lease`: claim with an attempt token, heartbeat, stale detection,
release, fail, requeue). Running one goes through three layers, each named by what it adds:

1. :func:`claim` (short transaction): lock the request row, then the job row (``FOR UPDATE
   SKIP LOCKED`` on PostgreSQL, so two workers never take the same job); ``queued ->
   running`` for the job and, for its first job, the request; audit ``request.running`` /
   ``job.started``.
2. :func:`run_claimed`: the job's log context and duration metric, and the lease policy
   (:func:`api.jobs.policy.execute`): heartbeat while it runs; a transient fault with
   retries left hands the job back (``queued``, audited ``job.retrying``) and re-raises
   for a Celery retry with backoff; any other failure fails job and request readably
   (audited ``job.failed``). ``POST /admin/requests/{id}/retry`` queues failed jobs again.
3. :func:`_unlearn_and_record` (the long transaction): lock the model's lineage (its
   training run row ``FOR UPDATE``, :func:`api.registry.service.lock_lineage`), run the
   job's method (:func:`unlearning_core.pipeline.apply_method`, with the job's
   ``method_options``) with the lineage ledger kept in that row
   (:class:`api.registry.ledger.DbLedger`), evaluate, then :func:`_record_result`: the
   version (:func:`api.registry.service.publish_version`), the job's result and, for the
   last job, the tombstones (:func:`api.datasets.service.tombstone`) and the request's
   completion commit together, or not at all. Progress is committed from separate short
   transactions so polling clients see it while the work transaction is open.

Exactly once: a job is only claimed while ``queued`` (or abandoned) with no version, and its
result is only recorded if, under the row lock, it is still ``running`` in the attempt that
claimed it. The ledger (in the same transaction as the version row) makes a retry after a
crash redo the same subtraction rather than subtract a batch twice. When every batch of a
forget set was already subtracted (a repeated request), nothing is published: the job is
linked to the current head version.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import torch
from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session

from api.audit.service import append as audit_append
from api.blobs import store_at
from api.compaction import service as compaction
from api.database.core import utcnow
from api.datasets import service as datasets
from api.erasure import states
from api.erasure.models import ErasureRequest, RequestJob
from api.erasure.states import JobStatus, RequestStatus
from api.jobs.lease import Lease, LeaseToken
from api.jobs.policy import FAILED, bounded, execute
from api.observability.context import log_context
from api.observability.metrics import observe_job, observe_unlearn
from api.registry import service as registry
from api.registry import withdrawal
from api.registry.ledger import DbLedger
from api.registry.models import Model, ModelVersion, TrainingRun
from api.registry.reports import publish_report
from api.webhooks import service as webhooks
from unlearning_core.artifacts import open_artifact
from unlearning_core.errors import RunError
from unlearning_core.forget import ForgetSpec
from unlearning_core.methods import version_guarantee
from unlearning_core.pipeline import MethodRun, apply_method, report
from unlearning_core.store import BlobStore
from unlearning_core.vocab import Guarantee

log = logging.getLogger("lethe.erasure")

SessionFactory = Callable[[], Session]
WORKER = "worker"

#: Keys of :func:`unlearning_core.pipeline.report` not kept in a version's metrics: they
#: repeat the version row (number, weights, method) or name the run.
NOT_METRICS = frozenset(
    {"run_id", "method", "version", "new_version", "weights", "weights_sha256", "method_options"}
)


@dataclass(frozen=True)
class Claim:
    """What a worker took: enough to do the job and, with its lease token, to prove it
    still owns the job when it records the result."""

    token: LeaseToken
    request_id: str
    model_id: int
    model_name: str
    method: str
    method_options: dict[str, Any]
    sample_ids: tuple[str, ...]
    #: ``X-Request-ID`` of the HTTP request that filed the erasure request (log context).
    http_request_id: str | None = None

    @property
    def job_id(self) -> int:
        return self.token.job_id

    @property
    def attempt(self) -> int:
        return self.token.attempt


# ---------------------------------------------------------------------------------------
# The lease over request_jobs
# ---------------------------------------------------------------------------------------


def _lock_request_of(db: Session, job_id: int, skip_locked: bool) -> ErasureRequest | None:
    """The job's request, locked first (the order every writer of both rows uses)."""
    request_id = db.scalar(select(RequestJob.request_id).where(RequestJob.id == job_id))
    if request_id is None:
        return None
    return db.scalar(
        select(ErasureRequest)
        .where(ErasureRequest.id == request_id)
        .with_for_update(skip_locked=skip_locked)
        .execution_options(populate_existing=True)
    )


def _workable(query: Any) -> Any:
    """Queued jobs of requests that may be worked on, oldest request first. A queued job of
    a completed request is a follow-up (the erasure applied again on a compaction's new
    lineage, or on a model that was training when the request completed): workable too."""
    return (
        query.join(ErasureRequest, ErasureRequest.id == RequestJob.request_id)
        .where(
            or_(
                ErasureRequest.status.in_([s.value for s in states.WORKABLE]),
                ErasureRequest.status == RequestStatus.COMPLETED,
            )
        )
        .order_by(ErasureRequest.received_at, RequestJob.id)
    )


LEASE: Lease[RequestJob] = Lease(
    RequestJob,
    kind="erasure job",
    workable=_workable,
    changed_column=ErasureRequest.updated_at,
    lock_parent=_lock_request_of,
)


def _model_name(db: Session, model_id: int) -> str | None:
    return db.scalar(select(Model.name).where(Model.id == model_id))


def _model_tenant(db: Session, model_id: int) -> str | None:
    return db.scalar(select(Model.tenant).where(Model.id == model_id))


def _audit_job(db: Session, kind: str, job: RequestJob, **payload: Any) -> None:
    audit_append(
        db,
        kind,
        request_id=job.request_id,
        model_name=_model_name(db, job.model_id),
        tenant=_model_tenant(db, job.model_id),
        actor=WORKER,
        payload={"job_id": job.id, "attempt": job.attempts, **payload},
    )


# ---------------------------------------------------------------------------------------
# Finding and claiming
# ---------------------------------------------------------------------------------------


def next_queued_job(
    *, session_factory: SessionFactory, exclude: Collection[int] = frozenset()
) -> int | None:
    """The oldest queued job of a workable request (received first, then job order)."""
    return LEASE.next_queued(session_factory=session_factory, exclude=exclude)


def claim(
    *, session_factory: SessionFactory, job_id: int, device: torch.device | str
) -> Claim | None:
    """Take ``job_id`` if it is queued (or running but abandoned: its heartbeat is stale)
    and its request workable; ``None`` otherwise. Commits ``running`` at once."""

    def take(db: Session, request: ErasureRequest, job: RequestJob, resumed: bool) -> Claim | None:
        if request.status not in states.WORKABLE and request.status != RequestStatus.COMPLETED:
            return None
        if job.version_id is not None:  # a result is already recorded: never publish twice
            log.warning(
                "job %s is queued but already answered by version row %s; not running it",
                job.id,
                job.version_id,
            )
            return None
        model = db.get(Model, job.model_id)
        assert model is not None
        if request.status == RequestStatus.QUEUED:
            states.transition(db, request, RequestStatus.RUNNING, actor=WORKER)
        job.progress, job.step = 0.05, "claimed"
        job.device = str(device)
        payload: dict[str, Any] = {
            "method": job.method,
            "device": str(device),
            "samples": len(job.sample_ids or []),
        }
        if job.method_options:
            payload["method_options"] = job.method_options
        if resumed:
            payload["resumed"] = "abandoned by a worker that stopped beating"
        _audit_job(db, "job.started", job, **payload)
        return Claim(
            token=LeaseToken(job_id=job.id, attempt=job.attempts),
            request_id=request.id,
            model_id=model.id,
            model_name=model.name,
            method=job.method,
            method_options=dict(job.method_options or {}),
            sample_ids=tuple(job.sample_ids or ()),
            http_request_id=request.http_request_id,
        )

    return LEASE.claim(session_factory=session_factory, job_id=job_id, on_claim=take)  # type: ignore[return-value]


# ---------------------------------------------------------------------------------------
# Running a claimed job
# ---------------------------------------------------------------------------------------


def process_job(
    *,
    session_factory: SessionFactory,
    store: BlobStore,
    job_id: int,
    device: torch.device,
    retry_transient: bool = False,
) -> str:
    """Claim ``job_id`` and run it: ``"completed"``, ``"failed"`` or ``"discarded"`` (see
    :func:`run_claimed`); ``"skipped"`` (quietly) if another worker has it, it is done, or
    it is not workable."""
    claimed = claim(session_factory=session_factory, job_id=job_id, device=device)
    if claimed is None:
        return "skipped"
    return run_claimed(
        session_factory=session_factory,
        store=store,
        claim=claimed,
        device=device,
        retry_transient=retry_transient,
    )


def run_claimed(
    *,
    session_factory: SessionFactory,
    store: BlobStore,
    claim: Claim,
    device: torch.device,
    retry_transient: bool = False,
) -> str:
    """Run a claimed job under the lease policy: ``completed``, ``failed``, or ``discarded``
    (another attempt took the job meanwhile). Every log line it writes carries the
    request's ids (the HTTP request id stored with the request, so an API line and the
    worker's share it); its duration is observed as ``lethe_job_duration_seconds``."""
    started = time.perf_counter()
    outcome = "retrying"  # what an exception out of execute means
    with log_context(
        request_id=claim.http_request_id,
        erasure_request_id=claim.request_id,
        job_id=claim.job_id,
        model=claim.model_name,
    ):
        try:
            recorded = execute(
                LEASE,
                session_factory=session_factory,
                token=claim.token,
                work=lambda: _unlearn_and_record(
                    session_factory=session_factory, store=store, claim=claim, device=device
                ),
                what=f"erasure job {claim.job_id} on {claim.model_name}",
                retry_transient=retry_transient,
                on_release=_on_release,
                on_fail=_on_fail,
            )
            outcome = "failed" if recorded is FAILED else "completed" if recorded else "discarded"
        finally:
            observe_job(method=claim.method, outcome=outcome, seconds=time.perf_counter() - started)
        if outcome == "completed":
            log.info(
                "erasure job %s on %s done (request %s)",
                claim.job_id, claim.model_name, claim.request_id,
            )
            try:  # the model's policy may ask for the exact tier now
                compaction.schedule_due(session_factory=session_factory, model_ids=[claim.model_id])
            except Exception as exc:  # noqa: BLE001 - the dispatcher's round tries again
                log.warning("could not check %s's erasure policy: %s", claim.model_name, exc)
    return outcome


def _on_release(db: Session, request: ErasureRequest, job: RequestJob) -> None:
    job.progress, job.step = 0.0, "retrying after a transient fault"
    _audit_job(db, "job.retrying", job, error=job.error)


def _on_fail(db: Session, request: ErasureRequest, job: RequestJob) -> None:
    job.step = "failed"
    _audit_job(db, "job.failed", job, error=job.error)
    if request.status == RequestStatus.RUNNING:
        model_name = _model_name(db, job.model_id)
        request.error = bounded(f"model {model_name!r}: {job.error}")
        states.transition(db, request, RequestStatus.FAILED, actor=WORKER, reason=request.error)


def _progress(
    session_factory: SessionFactory, claim: Claim, progress: float, step: str
) -> None:
    """Commit the job's progress from its own short transaction (status polls see it)."""
    LEASE.beat(session_factory=session_factory, token=claim.token, progress=progress, step=step)


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


def _unlearn_and_record(
    *, session_factory: SessionFactory, store: BlobStore, claim: Claim, device: torch.device
) -> bool:
    """The work transaction: unlearn under the lineage lock, evaluate, record; False if the
    result was discarded (the claim was lost meanwhile)."""
    with session_factory() as db, db.no_autoflush:
        asked = time.perf_counter()
        # Every change to this model's versions and ledger waits here, so concurrent
        # requests against one model are applied one after another.
        run = registry.lock_lineage(db=db, model_id=claim.model_id)
        if run is None:
            raise RunError(
                f"model {claim.model_name!r} has no completed training run to unlearn from"
            )
        started = time.perf_counter()
        store = store_at(run.store_url, store)
        artifact = open_artifact(store, run.run_id)
        in_run = set(artifact.sample_table["sample_ids"])
        forget = tuple(s for s in claim.sample_ids if s in in_run)
        details: dict[str, Any] = {
            "run_id": run.run_id,
            "forget_samples": len(forget),
            "samples_not_in_run": len(claim.sample_ids) - len(forget),
            "device": str(device),
            "lineage_wait_seconds": round(started - asked, 3),
        }
        done: MethodRun | None = None
        metrics: dict[str, Any] = {}
        if not forget:  # the dataset holds them, this run never trained on them: nothing to undo
            details["batches_subtracted"] = 0
        else:
            _progress(session_factory, claim, 0.1, "unlearning")
            done = apply_method(
                store,
                run_id=run.run_id,
                method=claim.method,
                method_options=claim.method_options,
                forget=ForgetSpec(sample_ids=forget),
                device=device,
                publish=True,
                ledger_store=DbLedger(db, run, store=store),
            )
            changed = done.outcome.changed
            _progress(session_factory, claim, 0.5, "evaluating" if changed else "publishing")
            full = report(done, evaluate=changed)
            metrics = jsonable({k: v for k, v in full.items() if k not in NOT_METRICS})
            if full.get("method_options"):
                details["method_options"] = full["method_options"]
            details.update(
                # which recorded steps this job subtracted: the purge attributes their
                # deleted updates to the request (receipts)
                subtracted_steps=sorted(done.outcome.subtracted_steps),
                unlearn_seconds=done.outcome.unlearn_seconds,
                recovery_seconds=done.outcome.recovery_seconds,
                **done.outcome.details,
                new_version=changed,
            )
        _progress(session_factory, claim, 0.9, "publishing")
        details["job_seconds"] = round(time.perf_counter() - started, 3)
        recorded = _record_result(
            db, store, claim, run=run, done=done, metrics=metrics, details=jsonable(details)
        )
        if not recorded:
            db.rollback()
            return False
        db.commit()
        if done is not None:
            observe_unlearn(method=claim.method, seconds=done.outcome.unlearn_seconds)
        return True


def _record_result(
    db: Session,
    store: BlobStore,
    claim: Claim,
    *,
    run: TrainingRun,
    done: MethodRun | None,
    metrics: dict[str, Any],
    details: dict[str, Any],
) -> bool:
    """In the work transaction: the version (new, or the head's), the job's result, and the
    request's completion if this was its last job. False if the claim was lost."""
    held = LEASE.lock_held(db, claim.token)
    if held is None or held[1].version_id:
        log.warning(
            "job %s (attempt %s) is no longer ours; discarding its result",
            claim.job_id,
            claim.attempt,
        )
        return False
    request, job = held
    model = db.get(Model, claim.model_id)
    assert model is not None
    changed = done is not None and done.outcome.changed
    if changed:
        assert done is not None and done.version is not None
        entry = done.version

        def render(event: Any) -> Any:
            rendered = publish_report(
                store=store,
                done=done,
                ledger=DbLedger(db, run, store=store).load(),
                model_name=claim.model_name,
                request_id=claim.request_id,
                subject_id=request.subject_id,
                metrics=metrics,
                audit=event,
            )
            return (rendered.ref, request.tenant) if rendered.ref else None

        version = registry.publish_version(
            db=db,
            model=model,
            number=entry.version,
            parent=entry.parent,
            method=entry.method,
            weights=entry.weights,
            metrics=metrics,
            created_at=entry.created_at,
            request_id=claim.request_id,
            actor=WORKER,
            report=render,
        )
        webhooks.emit(db, tenant=model.tenant, kind="version.published", payload={
            "model": model.name, "version": version.number, "method": version.method,
            "guarantee": version_guarantee(version.method)})
        withdrawal.schedule(
            db=db, model=model, successor=version, request_ids=[claim.request_id],
            reason="erasure", actor=WORKER,
            # a model still training never served its earlier versions: no grace
            grace=None if model.status == "ready" else timedelta(0),
        )
    else:
        head = (
            done.version
            if done is not None and done.version is not None
            else DbLedger(db, run, store=store).load().head
        )
        version = registry.version_of_entry(db=db, model_id=claim.model_id, entry=head)
    job.version_id = version.id
    if done is None or version_guarantee(version.method) == Guarantee.EXACT:
        # No sample of the request is in the lineage's training set (done is None: it
        # never trained on them), or the method is exact: the version never saw them.
        compaction.mark_exact(db=db, job=job, version=version)
    job.status = JobStatus.COMPLETED
    job.progress, job.step = 1.0, "done"
    job.details = details
    job.finished_at = utcnow()
    audit_append(
        db,
        "job.completed",
        request_id=claim.request_id,
        model_name=claim.model_name,
        tenant=model.tenant,
        actor=WORKER,
        payload={
            "job_id": claim.job_id,
            "version": version.number,
            "new_version": changed,
            "batches_subtracted": details.get("batches_subtracted"),
            "guarantee": Guarantee.EXACT if job.exact_at is not None else Guarantee.APPROXIMATE,
        },
    )
    db.flush()
    if model.status == "training" and _open_jobs(db, model.id) == 0:
        # the erasures that arrived while it trained are applied: it may serve now
        model.status = "ready"
        audit_append(
            db, "model.ready", model_name=model.name, tenant=model.tenant, actor=WORKER,
            payload={"version": version.number, "reason": "erasures that arrived during training applied"},
        )
    pending = db.scalar(
        select(RequestJob.id)
        .where(RequestJob.request_id == claim.request_id, RequestJob.status != JobStatus.COMPLETED)
        .limit(1)
    )
    if pending is None and request.status == RequestStatus.RUNNING:
        _complete_request(db, store, request)
    if job.exact_at is not None:  # webhooks: request.exact once all its jobs are exact
        webhooks.emit_exact(db, request_ids=[claim.request_id])
    return True


def _open_jobs(db: Session, model_id: int) -> int:
    return int(
        db.scalar(
            select(func.count(RequestJob.id)).where(
                RequestJob.model_id == model_id,
                RequestJob.status.in_([JobStatus.QUEUED, JobStatus.RUNNING]),
            )
        )
        or 0
    )


def _complete_request(db: Session, store: BlobStore, request: ErasureRequest) -> None:
    """The last job is done: tombstone the request's samples and complete it."""
    by_dataset: dict[int, set[str]] = {}
    for sample_ids, dataset_id in db.execute(
        select(RequestJob.sample_ids, Model.dataset_id)
        .join(Model, Model.id == RequestJob.model_id)
        .where(RequestJob.request_id == request.id)
    ):
        by_dataset.setdefault(dataset_id, set()).update(sample_ids or ())
    erased = datasets.tombstone(db=db, store=store, samples=by_dataset, request_id=request.id)
    versions = [
        {"model": name, "version": number}
        for name, number in db.execute(
            select(Model.name, ModelVersion.number)
            .join(RequestJob, RequestJob.version_id == ModelVersion.id)
            .join(Model, Model.id == ModelVersion.model_id)
            .where(RequestJob.request_id == request.id)
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
    webhooks.emit(db, tenant=request.tenant, kind="request.completed",
                  payload={"request_id": request.id, "versions": versions})


# ---------------------------------------------------------------------------------------
# Requeueing (the dispatcher, a restarted embedded worker) and what to enqueue
# ---------------------------------------------------------------------------------------


def requeue_abandoned(*, session_factory: SessionFactory) -> list[int]:
    """Put ``running`` jobs whose heartbeat is stale (their worker died) back in the queue,
    audited ``job.requeued``; their ids. Safe while other workers run."""

    def requeued(db: Session, request: ErasureRequest, job: RequestJob) -> None:
        last = job.heartbeat_at or job.started_at
        job.progress, job.step = 0.0, "re-queued: its worker stopped"
        audit_append(
            db,
            "job.requeued",
            request_id=job.request_id,
            model_name=_model_name(db, job.model_id),
            tenant=request.tenant,
            actor="dispatcher",
            payload={
                "job_id": job.id,
                "attempt": job.attempts,
                "reason": "no heartbeat since "
                + (last.isoformat() if last is not None else "the claim"),
            },
        )

    return LEASE.requeue_abandoned(session_factory=session_factory, on_requeue=requeued)


def requeue_interrupted(*, session_factory: SessionFactory) -> int:
    """Re-queue jobs left ``running`` by a worker that died (their requests go back to
    ``queued``); how many jobs. Only for the start of a deployment whose worker is the
    only one (the embedded default): elsewhere a running job may be alive."""

    def requeued(db: Session, request: ErasureRequest, job: RequestJob) -> None:
        job.progress, job.step = 0.0, None
        if request.status == RequestStatus.RUNNING:
            still_running = db.scalar(
                select(func.count(RequestJob.id)).where(
                    RequestJob.request_id == request.id, RequestJob.status == JobStatus.RUNNING
                )
            )
            states.transition(
                db,
                request,
                RequestStatus.QUEUED,
                actor=WORKER,
                reason="worker restarted",
                payload={"jobs": int(still_running or 0) + 1},  # this one is queued already
            )

    return LEASE.requeue_interrupted(session_factory=session_factory, on_requeue=requeued)


def pending_job_ids(
    *, session_factory: SessionFactory, changed_before: datetime | None = None
) -> list[int]:
    """Queued jobs of workable requests, oldest request first: what a dispatcher
    (re)enqueues (see :meth:`api.jobs.lease.Lease.pending_ids`)."""
    return LEASE.pending_ids(session_factory=session_factory, changed_before=changed_before)
