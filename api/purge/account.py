"""What the purge still has to delete for one erasure request, from its records.

The receipt (:mod:`api.receipts.service`) reaches ``purged`` only when this account is
empty, so it claims no more than the records show. For each model a job of the request
targets (cancelled jobs aside), with ``newest`` the newest version answering the request:

- every version older than ``newest`` held the subject's data (or its approximate
  residue): its weights and report must be recorded deleted (:class:`PurgedBlob`), whoever's
  withdrawal they went under. The current lineage's first version is kept as the metrics'
  reference until a compaction replaces the lineage (:mod:`api.purge.service`), and stays
  listed until then;
- every lineage before the current one that produced such a version: its ``run.json`` (the
  last blob a replaced lineage loses) must be recorded deleted;
- the updates of the steps the request's jobs subtracted: as many recorded deletions
  naming the request as steps, unless their whole lineage went;
- SISA: the slice checkpoints of the current lineage its ledger no longer references
  (listed from the store, the only place they are named);
- every upload of a target model's dataset: the request's samples must be among those
  blanked in the stored file (read from the file itself).

Data Lethe does not own (built-in datasets, server paths) is not the purge's: the receipt
lists those samples for their owner to delete.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from api.database.core import utcnow
from api.datasets.models import Dataset
from api.erasure.models import RequestJob
from api.jobs.states import JobState
from api.purge import uploads
from api.purge.models import PurgedBlob
from api.registry import service as registry
from api.registry import withdrawal
from api.registry.models import Model, ModelVersion, TrainingRun, VersionWithdrawal
from unlearning_core.errors import BlobStoreError
from unlearning_core.runs.artifact import run_prefix


@dataclass(frozen=True)
class Left:
    """Something holding the request's data that the purge has not deleted (yet)."""

    kind: str  # the purge reason that will take it
    where: str  # the model or dataset
    key: str
    detail: str


@dataclass
class Account:
    left: list[Left] = field(default_factory=list)
    #: Deletions the account rests on (blobs that held the request's data), oldest first.
    deleted: list[PurgedBlob] = field(default_factory=list)
    #: ``upload.rewritten`` events that removed the request's samples from an upload.
    rewrites: list[dict] = field(default_factory=list)
    #: Per uploaded dataset (id): whether every sample of the request is out of it.
    uploads_done: dict[int, bool] = field(default_factory=dict)

    @property
    def complete(self) -> bool:
        return not self.left

    def completed_at(self) -> datetime | None:
        """When the last deletion the account rests on happened (None: nothing was deleted)."""
        times = [r.deleted_at for r in self.deleted] + [w["rewritten_at"] for w in self.rewrites]
        return max(times) if times else None


def account(*, db: Session, request_id: str, jobs: Sequence[RequestJob], now: datetime | None = None) -> Account:
    """What is left of ``request_id`` for the purge, over the models of ``jobs``."""
    now = now or utcnow()
    out = Account()
    by_model: dict[int, list[RequestJob]] = {}
    for job in jobs:
        if job.status != JobState.CANCELLED:
            by_model.setdefault(job.model_id, []).append(job)
    for model_id, model_jobs in sorted(by_model.items()):
        model = db.get(Model, model_id)
        if model is not None:
            _model(db, out, model, model_jobs, request_id, now)
    _uploads(db, out, by_model, request_id)
    out.deleted.sort(key=lambda r: (r.deleted_at, r.id))
    return out


def _model(db: Session, out: Account, model: Model, jobs: list[RequestJob], request_id: str, now: datetime) -> None:
    purged = {r.key: r for r in db.scalars(select(PurgedBlob).where(PurgedBlob.model_id == model.id))}
    answering = [v for j in jobs for v in (j.version_id, j.exact_version_id) if v is not None]
    numbers = list(db.scalars(select(ModelVersion.number).where(ModelVersion.id.in_(answering)))) if answering else []
    if not numbers:
        return  # not answered: the request is not past received
    newest = max(numbers)
    lineage = registry.lineage_run(db=db, model_id=model.id)
    first = registry.first_version_number(lineage) if lineage is not None else None

    def gone(key: str) -> bool:
        row = purged.get(key)
        if row is not None and row not in out.deleted:
            out.deleted.append(row)
        return row is not None

    older = list(
        db.scalars(
            select(ModelVersion)
            .where(ModelVersion.model_id == model.id, ModelVersion.number < newest)
            .order_by(ModelVersion.number)
        )
    )
    withdrawn = withdrawal.of_versions(db=db, version_ids=[v.id for v in older])
    for v in older:
        for key in (v.weights_key, v.report_key):
            if key and not gone(key):
                out.left.append(Left("withdrawn-version", model.name, key, _why_kept(v, withdrawn.get(v.id), first, now)))

    runs = list(
        db.scalars(
            select(TrainingRun)
            .where(TrainingRun.model_id == model.id, TrainingRun.status == JobState.COMPLETED)
            .order_by(TrainingRun.id)
        )
    )
    for run in runs[:-1]:
        if registry.first_version_number(run) < newest and not gone(f"{run_prefix(run.run_id)}/run.json"):
            out.left.append(Left("replaced-lineage", model.name, f"{run_prefix(run.run_id)}/",
                                 f"lineage {run.run_id}, replaced by a compaction: deleted once all "
                                 "of its versions are withdrawn in force"))

    for job in jobs:
        _steps(out, model, job, request_id, purged, gone)

    if lineage is not None and first is not None and first < newest and (lineage.ledger or {}).get("checkpoints"):
        _checkpoints(db, out, model, lineage, gone)


Gone = Callable[[str], bool]


def _why_kept(v: ModelVersion, w: VersionWithdrawal | None, first: int | None, now: datetime) -> str:
    if w is None:
        return f"version {v.number} is not withdrawn: it is still served"
    if not w.in_force(now):
        return f"version {v.number} is withdrawn from {w.effective_at.isoformat()} (grace period)"
    if v.number == first:
        return (f"version {v.number}, the current lineage's first, is kept as the reference of later "
                "erasures' metrics until a compaction replaces the lineage")
    return f"version {v.number} is withdrawn: the next purge sweep deletes it"


def _steps(out: Account, model: Model, job: RequestJob, request_id: str,
           purged: dict[str, PurgedBlob], gone: Gone) -> None:
    """The updates of the steps ``job`` subtracted: recorded deleted as often as there are
    steps, naming the request (or their whole lineage is gone)."""
    details = job.details or {}
    run_id, steps = details.get("run_id"), details.get("subtracted_steps") or []
    if not run_id or not steps or job.status != JobState.COMPLETED:
        return
    if gone(f"{run_prefix(run_id)}/run.json"):
        return
    rows = [r for r in purged.values()
            if r.reason == "subtracted-step" and r.run_id == run_id and request_id in (r.request_ids or [])]
    for r in rows:
        gone(r.key)
    if len(rows) < len(steps):
        out.left.append(Left("subtracted-step", model.name, f"{run_prefix(run_id)}/updates/",
                             f"{len(steps) - len(rows)} of the {len(steps)} step updates job {job.id} "
                             "subtracted are not deleted yet"))


def _checkpoints(db: Session, out: Account, model: Model, lineage: TrainingRun, gone: Gone) -> None:
    referenced = {p["key"] for pointers in lineage.ledger["checkpoints"].values() for p in pointers}
    prefix = f"{run_prefix(lineage.run_id)}/shards/"
    try:
        keys = registry.store_of(db=db, model=model).list(prefix)
    except BlobStoreError as exc:
        out.left.append(Left("superseded-checkpoint", model.name, prefix, f"cannot list the store: {exc}"))
        return
    for key in keys:
        if key.endswith(".safetensors") and key not in referenced and not gone(key):
            out.left.append(Left("superseded-checkpoint", model.name, key,
                                 "a SISA checkpoint trained on the samples; the next purge sweep deletes it"))


def _uploads(db: Session, out: Account, by_model: dict[int, list[RequestJob]], request_id: str) -> None:
    """Per uploaded dataset of the target models: are the request's samples out of it?"""
    wanted: dict[int, set[str]] = {}
    for model_id, dataset_id in db.execute(select(Model.id, Model.dataset_id).where(Model.id.in_(list(by_model)))):
        ids = wanted.setdefault(dataset_id, set())
        for job in by_model[model_id]:
            ids.update(job.sample_ids or ())
    paths: list[str] = []
    for dataset in db.scalars(select(Dataset).where(Dataset.id.in_(list(wanted))).order_by(Dataset.id)):
        if uploads.upload_info(dataset) is None:
            continue
        paths.append(dataset.source)
        try:
            left = wanted[dataset.id] - uploads.removed_ids(dataset)
        except (OSError, ValueError) as exc:
            out.uploads_done[dataset.id] = False
            out.left.append(Left(uploads.REASON, dataset.name, dataset.source, f"cannot read the upload: {exc}"))
            continue
        out.uploads_done[dataset.id] = not left
        if left:
            out.left.append(Left(uploads.REASON, dataset.name, dataset.source,
                                 f"{len(left)} of the request's samples are still in the stored upload; "
                                 "the purge removes them once no open job or training needs them"))
    for event in uploads.rewrites_for(db=db, request_id=request_id, paths=paths):
        out.rewrites.append({**event.payload, "rewritten_at": event.created_at})
