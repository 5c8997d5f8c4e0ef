"""Running a compaction: retrain without every erased sample, publish the exact version,
settle the requests.

A compaction is a :class:`~api.registry.models.TrainingRun` of kind ``compaction`` under
the training runs' job lease (:mod:`api.registry.lease`), so the Celery task
``lethe.train_run`` (on the GPU queue when ``LETHE_WORK_QUEUE`` says so), the embedded
worker, the heartbeat and the dispatcher's requeue of abandoned runs all treat it like a
first training. One attempt:

1. *start* (short transaction): the lineage it replaces, and what it leaves out: every
   tombstoned sample of the dataset and every sample an erasure request on the model has
   asked for (:func:`api.compaction.service.excluded_for_compaction`);
2. *train* outside any transaction (:func:`unlearning_core.compaction.compact`): the
   model's own training specification on the retained data, as a new run in the blob
   store; a run already complete there (a worker died after training) is adopted;
3. *publish* (one transaction, under the old lineage's lock, only while this attempt holds
   the run): version ``head + 1`` (method ``compact``, audited ``model.compacted``), the
   run ``completed`` with a fresh ledger (the new lineage), then every job answered
   approximately none of whose samples are in the new run's stored sample list is exact
   with it, and every one whose samples it still trained on gets a job that applies the
   erasure again on the new lineage (:func:`api.compaction.service.settle_compaction`).

A failure leaves the model ``ready`` on its old lineage: the run is ``failed`` with the
error (audited ``model.compaction_failed``), ``GET /models/{name}/health`` and the
dashboard show it, and the policy asks again after ``LETHE_COMPACTION_RETRY_SECONDS``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from sqlalchemy.orm import Session

from api.audit.service import append as audit
from api.compaction import service
from api.database.core import utcnow
from api.datasets import service as datasets
from api.jobs.lease import LeaseToken
from api.jobs.policy import FAILED, execute
from api.jobs.states import JobState
from api.observability.metrics import observe_compaction
from api.registry import service as registry
from api.registry import withdrawal
from api.registry.lease import LEASE
from api.registry.models import Model, TrainingRun
from unlearning_core.compaction import compact
from unlearning_core.errors import RunError
from unlearning_core.pipeline import run_metrics
from unlearning_core.runs.artifact import RecordedRun, run_prefix
from unlearning_core.runs.ledger import Ledger, VersionEntry
from unlearning_core.runs.spec import RunSpec
from unlearning_core.store import BlobStore
from unlearning_core.training.loop import resolve_device
from unlearning_core.vocab import COMPACT_METHOD

log = logging.getLogger("lethe.compaction")

SessionFactory = Callable[[], Session]
WORKER = "worker"


class FixedLedger:
    """A lineage ledger as read at the start of the compaction (read-only: a compaction
    never changes the lineage it replaces)."""

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger

    def load(self) -> Ledger:
        return self.ledger.model_copy(deep=True)

    def save(self, ledger: Ledger) -> None:  # pragma: no cover - compact() only reads
        raise RunError("a compaction does not change the lineage it replaces")


@dataclass(frozen=True)
class Start:
    """What one attempt works from, read in one short transaction."""

    run_id: str
    trigger: str
    model_id: int
    model_name: str
    lineage_run_id: str
    ledger: Ledger
    exclude: list[str]


def _start(session_factory: SessionFactory, token: LeaseToken) -> Start:
    with session_factory() as db:
        run = db.get(TrainingRun, token.job_id)
        assert run is not None, f"compaction run {token.job_id} vanished"
        model = db.get(Model, run.model_id)
        assert model is not None
        lineage = registry.lineage_run(db=db, model_id=model.id)
        if lineage is None or lineage.ledger is None:
            raise RunError(f"model {model.name!r} has no completed training run to compact")
        erased = datasets.erased_ids(db=db, dataset_id=model.dataset_id)
        return Start(
            run_id=run.run_id,
            trigger=run.trigger or "manual",
            model_id=model.id,
            model_name=model.name,
            lineage_run_id=lineage.run_id,
            ledger=Ledger.model_validate(lineage.ledger),
            exclude=service.excluded_for_compaction(db=db, model=model, erased=erased),
        )


def process_compaction(
    *,
    session_factory: SessionFactory,
    store: BlobStore,
    device: torch.device | str | None,
    token: LeaseToken,
    retry_transient: bool = False,
) -> bool:
    """Run one claimed compaction under the lease policy (:func:`api.jobs.policy.execute`);
    False if it failed. With ``retry_transient`` a transient fault (store or database
    away) puts the run back in the queue and is re-raised for a Celery retry."""
    started = time.perf_counter()
    outcome = "retrying"
    try:
        done = execute(
            LEASE,
            session_factory=session_factory,
            token=token,
            work=lambda: _compact_and_publish(
                session_factory=session_factory, store=store, device=device, token=token
            ),
            what=f"compaction run {token.job_id}",
            retry_transient=retry_transient,
            on_fail=_on_fail,
        )
        outcome = "failed" if done is FAILED else "completed" if done else "discarded"
    finally:
        observe_compaction(outcome=outcome, seconds=time.perf_counter() - started)
    return outcome == "completed"


def _on_fail(db: Session, _parent: None, run: TrainingRun) -> None:
    """A failed compaction leaves the model serving its old lineage; it is audited and
    shown (health, dashboard) so it is seen long before any due date."""
    model = db.get(Model, run.model_id)
    audit(
        db,
        "model.compaction_failed",
        model_name=model.name if model else None,
        tenant=model.tenant if model else None,
        actor=WORKER,
        payload={"run_id": run.run_id, "trigger": run.trigger, "error": run.error},
    )


def _compact_and_publish(
    *,
    session_factory: SessionFactory,
    store: BlobStore,
    device: torch.device | str | None,
    token: LeaseToken,
) -> bool:
    start = _start(session_factory, token)
    dev = device if isinstance(device, torch.device) else resolve_device(device)
    prefix = run_prefix(start.run_id)
    if store.exists(f"{prefix}/run.json"):
        log.warning("compaction run %s is already complete in the store; adopting it", start.run_id)
        result: dict[str, Any] = {}
    else:
        log.info(
            "compacting %s: retraining %s without %d erased sample(s) (trigger %s)",
            start.model_name, start.lineage_run_id, len(start.exclude), start.trigger,
        )
        result = compact(
            store,
            run_id=start.lineage_run_id,
            new_run_id=start.run_id,
            exclude=start.exclude,
            trigger=start.trigger,
            ledger_store=FixedLedger(start.ledger),
            device=dev,
        )
    spec = RunSpec.model_validate(store.get_json(f"{prefix}/run.json"))
    if not result:
        result = _evaluate(store, spec, dev)
    trained = set(RecordedRun(store, spec).sample_table["sample_ids"])
    return _publish(
        session_factory=session_factory, store=store, token=token, start=start, spec=spec,
        trained=trained, result=result,
    )


def _evaluate(store: BlobStore, spec: RunSpec, device: torch.device) -> dict[str, Any]:
    """The metrics of a compaction run adopted from the store."""
    origin = spec.origin
    return {
        **run_metrics(RecordedRun(store, spec), device),
        "excluded_samples": origin.excluded_samples if origin else None,
    }


def _publish(
    *,
    session_factory: SessionFactory,
    store: BlobStore,
    token: LeaseToken,
    start: Start,
    spec: RunSpec,
    trained: set[str],
    result: dict[str, Any],
) -> bool:
    """The exact version and the new lineage, and the requests settled: one transaction,
    only while this attempt holds the run (a compaction publishes once)."""
    with session_factory() as db, db.no_autoflush:
        old = registry.lock_lineage(db=db, model_id=start.model_id)
        held = LEASE.lock_held(db, token)
        if held is None:
            log.warning("compaction run %s is no longer ours to publish; leaving it", start.run_id)
            db.rollback()
            return False
        _parent, run = held
        model = db.get(Model, start.model_id)
        assert model is not None
        head = registry.latest_version(db=db, model_id=model.id)
        number = head.number + 1 if head is not None else 0
        parent = head.number if head is not None else None
        metrics = {
            "test_acc": result.get("test_acc"),
            "train_acc": result.get("train_acc"),
            "train_seconds": result.get("train_seconds"),
            "storage_bytes": result.get("storage_bytes"),
            "steps": result.get("steps"),
            "device": result.get("device"),
            "excluded_samples": result.get("excluded_samples"),
            "retained_samples": result.get("retained_samples", len(trained)),
            "trigger": start.trigger,
        }
        version = registry.publish_version(
            db=db,
            model=model,
            number=number,
            parent=parent,
            method=COMPACT_METHOD,
            weights=spec.trained_weights,
            metrics=metrics,
            event="model.compacted",
            actor=WORKER,
            payload={
                "run_id": start.run_id,
                "replaces": old.run_id if old is not None else start.lineage_run_id,
                "trigger": start.trigger,
                "excluded_total": len(spec.dataset.exclude_sample_ids),
                "guarantee": "exact",
            },
        )
        first = VersionEntry(
            version=number, weights=spec.trained_weights, parent=parent, method=COMPACT_METHOD
        )
        run.ledger = Ledger(versions=[first]).model_dump(mode="json")
        run.status = JobState.COMPLETED
        run.error = None
        run.finished_at = utcnow()
        exact, again = service.settle_compaction(db=db, model=model, version=version, trained=trained)
        # The whole earlier lineage held what the compaction left out: withdrawn after grace.
        if exact:
            withdrawal.schedule(
                db=db, model=model, successor=version, request_ids=exact, reason="compaction",
                actor=WORKER,
            )
        db.commit()
    log.info(
        "compacted %s: version %d (exact; %d request(s) made exact, %d job(s) re-applied on the new lineage)",
        start.model_name, number, len(exact), len(again),
    )
    return True
