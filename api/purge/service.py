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

Kept always: the current lineage's head and first version, its unsubtracted updates, its
index, samples and ledger. Each deletion is a :class:`PurgedBlob` row (key, sha256, size,
reason, the requests where known) and part of one ``blobs.deleted`` audit event per model
and sweep. A blob deleted but not yet recorded (a crash in between) is recorded by the
next sweep; deleting a missing blob is a no-op, so nothing is deleted twice.

Not purged yet: erased samples inside uploaded datasets.
On S3 with bucket versioning a delete leaves earlier object versions: use an unversioned
bucket (or a lifecycle rule expiring noncurrent versions) for Lethe's store.
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
from api.erasure.models import RequestJob
from api.jobs.states import JobState
from api.purge.models import PurgedBlob
from api.registry import service as registry
from api.registry.models import Model, ModelVersion, TrainingRun, VersionWithdrawal
from unlearning_core.artifacts import open_artifact
from unlearning_core.errors import BlobNotFoundError
from unlearning_core.runs.artifact import run_prefix
from unlearning_core.store import BlobStore

log = logging.getLogger("lethe.purge")

SessionFactory = Callable[[], Session]


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


def purge_model(*, db: Session, model: Model, now: datetime | None = None) -> list[PurgedBlob]:
    """Delete what :func:`plan` names and is not recorded yet; record and audit it, in the
    caller's transaction (commit after: a blob is deleted before its row is written)."""
    now = now or utcnow()
    store = registry.store_of(db=db, model=model)
    recorded = set(
        db.scalars(select(PurgedBlob.key).where(PurgedBlob.store_url == store.url, PurgedBlob.model_id == model.id))
    )
    rows: list[PurgedBlob] = []
    seen: set[str] = set()
    for d in plan(db=db, model=model, store=store, now=now):
        if d.key in recorded or d.key in seen:
            continue
        seen.add(d.key)
        sha256, size = _stat(store, d)
        store.delete(d.key)  # idempotent
        row = PurgedBlob(
            store_url=store.url, key=d.key, sha256=sha256, size=size, reason=d.reason,
            model_id=model.id, run_id=d.run_id, version=d.version,
            request_ids=list(d.request_ids), deleted_at=now,
        )
        db.add(row)
        rows.append(row)
    if rows:
        counts: dict[str, int] = {}
        for r in rows:
            counts[r.reason] = counts.get(r.reason, 0) + 1
        audit(
            db,
            "blobs.deleted",
            model_name=model.name,
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
        db.flush()
    return rows


def sweep(*, session_factory: SessionFactory, now: datetime | None = None) -> int:
    """One purge round over every model, each in its own transaction; how many blobs went.
    A model whose store fails is logged and left to the next round."""
    with session_factory() as db:
        model_ids = list(db.scalars(select(Model.id).order_by(Model.id)))
    total = 0
    for model_id in model_ids:
        with session_factory() as db:
            model = db.get(Model, model_id)
            if model is None:
                continue
            try:
                rows = purge_model(db=db, model=model, now=now)
                db.commit()
            except Exception as exc:  # noqa: BLE001 - the next round retries
                db.rollback()
                log.warning("purge of %s failed, retried next round: %s", model.name, exc)
                continue
            if rows:
                log.info("purged %d blob(s) of %s", len(rows), model.name)
            total += len(rows)
    return total

