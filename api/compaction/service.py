"""The exact tier in the database: which jobs are exact, a lineage's health, asking for a
compaction (by an admin or by the model's policy).

A model's *lineage* is its newest completed training run (``train`` or ``compaction``):
the run every erasure works from, holding the ledger of subtracted steps. A job is
*awaiting exact* while it is completed with an approximate version only
(``exact_at`` NULL). A compaction is a queued :class:`TrainingRun` of kind
``compaction``; :mod:`api.compaction.flows` trains and publishes it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, func, select
from sqlalchemy.orm import Session, aliased

from api import wake
from api.audit.service import append as audit
from api.compaction.policy import merged, policy_of
from api.config import get_settings
from api.database.core import utcnow
from api.erasure import service as erasure
from api.erasure.models import ErasureRequest, RequestJob
from api.errors import ConflictError
from api.jobs.states import JobState
from api.registry import service as registry
from api.registry.models import Model, ModelVersion, RunKind, TrainingRun
from api.webhooks import service as webhooks
from unlearning_core.compaction import LineageState, Trigger, deadline_of, due_trigger, triggers
from unlearning_core.runs.ledger import Ledger
from unlearning_core.vocab import TrainingMethod

log = logging.getLogger("lethe.compaction")

SessionFactory = Callable[[], Session]

#: Job states whose samples a compaction leaves out even before they are tombstoned: the
#: erasure was asked for (only pending approval and cancelled jobs are not).
ASKED = (JobState.QUEUED, JobState.RUNNING, JobState.COMPLETED, JobState.FAILED)
ACTIVE = (JobState.QUEUED, JobState.RUNNING)


# ---------------------------------------------------------------------------------------
# Lineage
# ---------------------------------------------------------------------------------------


def active_compaction(*, db: Session, model_id: int) -> TrainingRun | None:
    return db.scalar(
        select(TrainingRun).where(
            TrainingRun.model_id == model_id,
            TrainingRun.kind == RunKind.COMPACTION,
            TrainingRun.status.in_([s.value for s in ACTIVE]),
        ).limit(1)
    )


def last_compaction(*, db: Session, model_id: int) -> TrainingRun | None:
    return db.scalar(
        select(TrainingRun)
        .where(TrainingRun.model_id == model_id, TrainingRun.kind == RunKind.COMPACTION)
        .order_by(TrainingRun.id.desc())
        .limit(1)
    )


def _awaiting(model_id: int) -> Any:
    return and_(
        RequestJob.model_id == model_id,
        RequestJob.status == JobState.COMPLETED,
        RequestJob.exact_at.is_(None),
    )


def awaiting_exact(*, db: Session, model_id: int) -> tuple[int, datetime | None, datetime | None]:
    """Requests with a job on the model answered approximately only: how many, the oldest
    one's ``received_at`` and the earliest legal ``due_at``."""
    count, oldest, due = db.execute(
        select(
            func.count(func.distinct(RequestJob.request_id)),
            func.min(ErasureRequest.received_at),
            func.min(ErasureRequest.due_at),
        )
        .join(ErasureRequest, ErasureRequest.id == RequestJob.request_id)
        .where(_awaiting(model_id))
    ).one()
    return int(count or 0), oldest, due


def requests_awaiting_exact(*, db: Session) -> int:
    """Requests (all models) with a job answered approximately only (a gauge of /metrics)."""
    return int(
        db.scalar(
            select(func.count(func.distinct(RequestJob.request_id))).where(
                RequestJob.status == JobState.COMPLETED, RequestJob.exact_at.is_(None)
            )
        )
        or 0
    )


def _metrics_of(db: Session, model_id: int, number: int) -> dict[str, float | None]:
    """A version's numeric metrics (None for the rest, and for a version without metrics)."""
    metrics = db.scalar(
        select(ModelVersion.metrics).where(
            ModelVersion.model_id == model_id, ModelVersion.number == number
        )
    ) or {}
    return {
        k: float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None
        for k, v in metrics.items()
    }


def lineage_state(*, db: Session, model: Model, run: TrainingRun) -> tuple[LineageState, dict[str, Any]]:
    """What the policy looks at for the model's lineage ``run``, and the figures behind it."""
    ledger = Ledger.model_validate(run.ledger) if run.ledger else None
    first = registry.first_version_number(run)
    head = ledger.head.version if ledger else first
    first_metrics = _metrics_of(db, model.id, first)
    steps = first_metrics.get("steps")
    subtracted = len(ledger.subtracted_steps) if ledger else 0
    first_acc = first_metrics.get("test_acc")
    latest_acc = first_acc if head == first else _metrics_of(db, model.id, head).get("test_acc")
    drop = first_acc - latest_acc if first_acc is not None and latest_acc is not None else None
    waiting, oldest, due = awaiting_exact(db=db, model_id=model.id)
    train_seconds = first_metrics.get("train_seconds")
    state = LineageState(
        waiting_requests=waiting,
        oldest_waiting_at=oldest,
        subtracted_share=subtracted / steps if steps else 0.0,
        accuracy_drop=drop,
        estimated_seconds=train_seconds,
    )
    figures = {
        "first_version": first,
        "head_version": head,
        "versions_since_compaction": head - first,
        "recorded_steps": int(steps) if steps else None,
        "subtracted_steps": subtracted,
        "first_test_acc": first_acc,
        "latest_test_acc": latest_acc,
        "oldest_due_at": due,
    }
    return state, figures


# ---------------------------------------------------------------------------------------
# Asking for a compaction
# ---------------------------------------------------------------------------------------


def request_compaction(
    *,
    db: Session,
    model: Model,
    trigger: Trigger | str,
    actor: str | None,
    state: dict[str, Any] | None = None,
) -> TrainingRun:
    """Queue a compaction of ``model`` in the caller's transaction (the worker is woken
    once it commits); audited ``model.compaction_queued``. :class:`ConflictError` when
    there is nothing to compact or one is already queued or running."""
    locked = db.scalar(select(Model).where(Model.id == model.id).with_for_update())
    assert locked is not None
    if locked.method == TrainingMethod.SISA:
        raise ConflictError(
            f"model {model.name!r} is a SISA model: every erasure already retrains the shards "
            "that held the data, so its versions are exact and there is nothing to compact"
        )
    if locked.status != "ready":
        raise ConflictError(f"model {model.name!r} is {locked.status}; only a ready model is compacted")
    active = active_compaction(db=db, model_id=model.id)
    if active is not None:
        raise ConflictError(
            f"model {model.name!r} has a compaction {active.status} already (run {active.run_id})"
        )
    lineage = registry.lineage_run(db=db, model_id=model.id)
    if lineage is None:
        raise ConflictError(f"model {model.name!r} has no completed training run to compact")
    imported = (lineage.config or {}).get("imported") or {}
    others = [o for o in imported.get("optimizers") or [] if o.rsplit(".", 1)[-1] != "SGD"]
    if others:  # unlearning_core.compaction retrains with SGD: it would not be the same training
        raise ConflictError(
            f"model {model.name!r} was imported from a run trained by its own loop with {', '.join(others)}; "
            "Lethe retrains with SGD and cannot reproduce it: retrain it yourself without the erased "
            "samples and import the new run"
        )
    run = TrainingRun(
        model_id=model.id,
        run_id=f"{registry.new_run_id(model.name)}-compaction",
        store_url=lineage.store_url,
        method=lineage.method,
        config=dict(lineage.config or {}),
        status=JobState.QUEUED,
        kind=RunKind.COMPACTION,
        trigger=str(trigger),
    )
    db.add(run)
    db.flush()
    audit(
        db,
        "model.compaction_queued",
        model_name=model.name,
        tenant=model.tenant,
        actor=actor,
        payload={
            "run_id": run.run_id,
            "replaces": lineage.run_id,
            "trigger": str(trigger),
            **({"state": state} if state else {}),
        },
    )
    wake.after_commit(db, wake.TRAIN_RUN, [run.id])
    return run


def _state_payload(state: LineageState) -> dict[str, Any]:
    return {
        "waiting_requests": state.waiting_requests,
        "oldest_waiting_at": state.oldest_waiting_at.isoformat() if state.oldest_waiting_at else None,
        "subtracted_share": round(state.subtracted_share, 4),
        "accuracy_drop": None if state.accuracy_drop is None else round(state.accuracy_drop, 4),
    }


def schedule_due(
    *, session_factory: SessionFactory, model_ids: Iterable[int] | None = None, now: datetime | None = None
) -> list[int]:
    """Queue a compaction for every ready model whose policy fires now (and that has none
    queued or running, nor one that failed within ``LETHE_COMPACTION_RETRY_SECONDS``);
    the new runs' primary keys. Called by the dispatcher, the embedded worker and after
    each erasure job; each model in its own short transaction."""
    settings = get_settings()
    now = now or utcnow()
    queued: list[int] = []
    with session_factory() as db:
        query = select(Model.id).where(
            Model.status == "ready", Model.method != TrainingMethod.SISA.value
        )
        if model_ids is not None:
            query = query.where(Model.id.in_(list(model_ids)))
        candidates = list(db.scalars(query.order_by(Model.id)))
    for model_id in candidates:
        with session_factory() as db:
            model = db.get(Model, model_id)
            run = registry.lineage_run(db=db, model_id=model_id)
            if model is None or run is None or active_compaction(db=db, model_id=model_id):
                continue
            last = last_compaction(db=db, model_id=model_id)
            if (
                last is not None
                and last.status == JobState.FAILED
                and last.finished_at is not None
                and now - last.finished_at < timedelta(seconds=settings.compaction_retry_seconds)
            ):
                continue
            state, _figures = lineage_state(db=db, model=model, run=run)
            trigger = due_trigger(policy_of(model.erasure_policy), state, now)
            if trigger is None:
                continue
            try:
                new = request_compaction(
                    db=db, model=model, trigger=trigger, actor="policy", state=_state_payload(state)
                )
            except ConflictError as exc:  # another worker asked first, or it stopped being ready
                db.rollback()
                log.info("no compaction of %s: %s", model.name, exc)
                continue
            db.commit()
            log.info("compaction of %s queued (trigger %s)", model.name, trigger)
            queued.append(new.id)
    return queued


# ---------------------------------------------------------------------------------------
# Marking the exact tier
# ---------------------------------------------------------------------------------------


def mark_exact(*, db: Session, job: RequestJob, version: ModelVersion) -> None:
    """The job is answered exactly by ``version`` (an exact method, or a lineage that never
    trained on its samples)."""
    job.exact_version_id = version.id
    job.exact_at = utcnow()


def excluded_for_compaction(*, db: Session, model: Model, erased: set[str]) -> list[str]:
    """What a compaction starting now leaves out: the dataset's tombstoned samples
    (``erased``) and every sample an erasure request on this model asked for (queued,
    running, completed or failed jobs: they will be tombstoned when their request ends)."""
    asked: set[str] = set(erased)
    for sample_ids in db.scalars(
        select(RequestJob.sample_ids).where(
            RequestJob.model_id == model.id, RequestJob.status.in_([s.value for s in ASKED])
        )
    ):
        asked.update(sample_ids or ())
    return sorted(asked)


def settle_compaction(
    *, db: Session, model: Model, version: ModelVersion, trained: set[str]
) -> tuple[list[str], list[int]]:
    """After a compaction's version ``version`` is written (same transaction): every job
    answered approximately none of whose samples the compaction trained on (``trained``:
    its run's stored sample list) is exact with it; one whose samples it still trained on
    (asked for while it ran) gets a job that applies the erasure again on the new lineage.
    Returns (the requests of the jobs made exact, new job ids)."""
    now = utcnow()
    exact: list[str] = []
    again: list[RequestJob] = []
    child = aliased(RequestJob)
    repeated = set(
        db.scalars(
            select(child.reapplies_job_id).where(
                child.model_id == model.id, child.reapplies_job_id.is_not(None)
            )
        )
    )
    for job in db.scalars(select(RequestJob).where(_awaiting(model.id)).order_by(RequestJob.id)):
        if not trained.intersection(job.sample_ids or ()):
            job.exact_version_id, job.exact_at = version.id, now
            if job.request_id not in exact:
                exact.append(job.request_id)
        elif job.id not in repeated:  # applied again once already: that job covers it
            again.append(job)
    new_ids = [
        erasure.add_follow_up_job(
            db=db, request_id=job.request_id, model=model, method=job.method,
            method_options=job.method_options, sample_ids=list(job.sample_ids or ()),
            reason=f"its samples were erased while compaction to version {version.number} trained",
            event="job.reapplied", reapplies_job_id=job.id,
            payload={"reapplies_job_id": job.id, "version": version.number},
        )
        for job in again
    ]
    webhooks.emit(db, tenant=model.tenant, kind="version.published", payload={
        "model": model.name, "version": version.number, "method": version.method, "guarantee": "exact"})
    webhooks.emit_exact(db, request_ids=exact)
    return exact, new_ids


# ---------------------------------------------------------------------------------------
# Health: what GET /models/{name}/health and the dashboard show
# ---------------------------------------------------------------------------------------


def health(*, db: Session, model: Model, now: datetime | None = None) -> dict[str, Any]:
    """The lineage's health as plain data (see :class:`api.compaction.schemas.ModelHealth`)."""
    now = now or utcnow()
    policy = policy_of(model.erasure_policy)
    run = registry.lineage_run(db=db, model_id=model.id)
    last = last_compaction(db=db, model_id=model.id)
    sisa = model.method == TrainingMethod.SISA
    alerts: list[str] = []
    if run is not None:
        state, figures = lineage_state(db=db, model=model, run=run)
    else:
        state = LineageState(0, None, 0.0, None, None)
        figures = {"first_version": 0, "head_version": 0, "versions_since_compaction": 0,
                   "recorded_steps": None, "subtracted_steps": 0, "first_test_acc": None,
                   "latest_test_acc": None, "oldest_due_at": None}
    rows = [] if sisa else triggers(policy, state, now)
    firing = next((r["trigger"] for r in rows if r["fires"]), None)
    deadline = deadline_of(policy, state)
    nearest = firing or next(
        (r["trigger"] for r in rows if r["trigger"] == Trigger.DEADLINE and r.get("fires_at")), None
    )
    if last is not None and last.status == JobState.FAILED:
        alerts.append(f"the last compaction ({last.run_id}) failed: {last.error}")
    if last is not None and last.status in ACTIVE and last.attempts > 1:
        alerts.append(f"compaction {last.run_id} is on attempt {last.attempts}")
    if deadline is not None and deadline < now:
        alerts.append(f"the oldest approximate request is past its exact deadline ({deadline.isoformat()})")
    if figures["oldest_due_at"] is not None and figures["oldest_due_at"] < now:
        alerts.append("a request answered approximately only is past its legal due date")
    return {
        "model": model.name,
        "method": model.method,
        "status": model.status,
        "exact_by_construction": sisa,
        "lineage": (
            {
                "run_id": run.run_id,
                "kind": run.kind,
                "trigger": run.trigger,
                "first_version": figures["first_version"],
                "head_version": figures["head_version"],
                "started_at": run.finished_at,
            }
            if run is not None
            else None
        ),
        "versions_since_compaction": figures["versions_since_compaction"],
        "recorded_steps": figures["recorded_steps"],
        "subtracted_steps": figures["subtracted_steps"],
        "subtracted_share": round(state.subtracted_share, 6),
        "first_test_acc": figures["first_test_acc"],
        "latest_test_acc": figures["latest_test_acc"],
        "accuracy_drift": state.accuracy_drop,
        "awaiting_exact": {
            "requests": state.waiting_requests,
            "oldest_received_at": state.oldest_waiting_at,
            "oldest_exact_due_at": deadline,
            "earliest_due_at": figures["oldest_due_at"],
        },
        "policy": policy,
        "triggers": rows,
        "next_trigger": nearest,
        "estimated_compaction_seconds": state.estimated_seconds,
        "compaction": compaction_out(model=model, run=last) if last is not None else None,
        "alerts": alerts,
    }


def compaction_out(*, model: Model, run: TrainingRun) -> dict[str, Any]:
    return {
        "model": model.name,
        "run_id": run.run_id,
        "status": run.status,
        "trigger": run.trigger,
        "error": run.error,
        "created_at": run.created_at,
        "started_at": run.started_at,
        "finished_at": run.finished_at,
        "attempts": run.attempts,
    }


def set_policy(*, db: Session, model: Model, changes: dict[str, Any], actor: str | None) -> dict[str, Any]:
    """Change the model's erasure policy (validated; audited ``model.policy_changed`` with
    the old and new policy). Commits."""
    before = policy_of(model.erasure_policy)
    after = merged(model.erasure_policy, changes)
    model.erasure_policy = after.model_dump(mode="json")
    audit(
        db,
        "model.policy_changed",
        model_name=model.name,
        tenant=model.tenant,
        actor=actor,
        payload={
            "before": before.model_dump(mode="json"),
            "after": after.model_dump(mode="json"),
            "changed": sorted(changes),
        },
    )
    db.commit()
    return after.model_dump(mode="json")
