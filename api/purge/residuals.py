"""The residual scan: what still holds an erased subject past its deadline.

``lethe audit residuals`` and ``GET /admin/residuals`` walk the database and the blob store
and list, with its key:

- ``version-not-withdrawn``: a version older than one that answers an erasure, with no
  withdrawal at all (published before withdrawals existed, or a bug);
- ``withdrawn-version-blob``: the weights or report of a version withdrawn in force, still
  stored (the current lineage's first version only once the model is past its exact
  deadline: until then it is the reference of later erasures' metrics);
- ``subtracted-step-update``: the recorded update of a subtracted step, still stored;
- ``replaced-lineage``: a lineage replaced by a compaction, all of its versions withdrawn
  in force, still stored (its ``run.json``);
- ``superseded-checkpoint``: a SISA slice checkpoint the ledger no longer references;
- ``erased-sample-data``: a manifest uploaded to Lethe that still holds the image of an
  erased sample nothing needs any more (its ``key`` is the file's path, ``dataset`` and
  ``samples`` say whose and how many), or whose bytes are not what Lethe recorded.

After a purge sweep the list is empty: each kind is what the sweep deletes past its grace
(a withdrawal in force; for an upload, no open job or training of the dataset's models).
A delete that failed leaves its blob listed until a later sweep succeeds.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from api.compaction import service as compaction
from api.compaction.policy import policy_of
from api.database.core import utcnow
from api.datasets.models import Dataset
from api.erasure.models import RequestJob
from api.jobs.states import JobState
from api.purge import redact, uploads
from api.purge.service import plan
from api.registry import service as registry
from api.registry.models import Model, ModelVersion, VersionWithdrawal
from unlearning_core.compaction import deadline_of

KIND_OF_REASON = {
    "withdrawn-version": "withdrawn-version-blob",
    "subtracted-step": "subtracted-step-update",
    "replaced-lineage": "replaced-lineage",
    "superseded-checkpoint": "superseded-checkpoint",
    uploads.REASON: "erased-sample-data",
}


def scan(*, db: Session, now: datetime | None = None, tenant: str | None = None) -> list[dict[str, Any]]:
    """Every residual of every model and upload (see the module doc), oldest model first;
    with ``tenant``, of that tenant's only (the HTTP route: an admin sees its tenant's)."""
    now = now or utcnow()
    found: list[dict[str, Any]] = []
    models = select(Model).order_by(Model.id)
    uploaded = select(Dataset).order_by(Dataset.id)
    if tenant is not None:
        models, uploaded = models.where(Model.tenant == tenant), uploaded.where(Dataset.tenant == tenant)
    for model in db.scalars(models):
        store = registry.store_of(db=db, model=model)
        first = len(found)
        found.extend(_unwithdrawn(db, model))
        for d in plan(db=db, model=model, store=store, now=now, for_deletion=False):
            if d.reason == "replaced-lineage" and not d.key.endswith("/run.json"):
                continue  # one row per lineage
            if store.exists(d.key):
                found.append(
                    {"kind": KIND_OF_REASON[d.reason], "model": model.name, "key": d.key,
                     "version": d.version, "run_id": d.run_id}
                )
        found.extend(_overdue_reference(db, model, store, now))
        for row in found[first:]:
            row["tenant"] = model.tenant  # model names are unique within a tenant only
    for dataset in db.scalars(uploaded):
        if uploads.upload_info(dataset) is not None:
            found.extend({**row, "tenant": dataset.tenant} for row in _upload(db, dataset))
    return found


def _upload(db: Session, dataset: Dataset) -> list[dict[str, Any]]:
    """The upload if it holds erased samples the purge may remove now, or if its bytes are
    not the ones Lethe recorded (then nothing can be said of what it holds)."""
    row = {"kind": "erased-sample-data", "model": None, "key": dataset.source, "version": None,
           "run_id": None, "dataset": dataset.name}
    recorded = (uploads.upload_info(dataset) or {}).get("sha256")
    try:
        sha256, _size = redact.file_sha256(Path(dataset.source))
        todo = uploads.plan(db=db, dataset=dataset)
    except OSError as exc:
        return [{**row, "error": f"cannot read the upload: {exc}"}]
    if sha256 != recorded:
        return [{**row, "error": f"sha256 {sha256}, not the {recorded} Lethe recorded"}]
    return [{**row, "samples": len(todo.pending)}] if todo.pending else []


def _unwithdrawn(db: Session, model: Model) -> list[dict[str, Any]]:
    """Versions older than the newest version that answers an erasure, without withdrawal."""
    answering = db.scalar(
        select(ModelVersion.number)
        .join(RequestJob, RequestJob.version_id == ModelVersion.id)
        .where(ModelVersion.model_id == model.id, RequestJob.status == JobState.COMPLETED)
        .order_by(ModelVersion.number.desc())
        .limit(1)
    )
    if answering is None:
        return []
    withdrawn = select(VersionWithdrawal.version_id).where(VersionWithdrawal.model_id == model.id)
    return [
        {"kind": "version-not-withdrawn", "model": model.name, "key": v.weights_key,
         "version": v.number, "run_id": None}
        for v in db.scalars(
            select(ModelVersion).where(
                ModelVersion.model_id == model.id,
                ModelVersion.number < answering,
                ModelVersion.id.not_in(withdrawn),
            ).order_by(ModelVersion.number)
        )
    ]


def _overdue_reference(db: Session, model: Model, store: Any, now: datetime) -> list[dict[str, Any]]:
    """The current lineage's withdrawn first version, kept as the metrics' reference, once
    the oldest request waiting for exact is past its exact deadline."""
    run = registry.lineage_run(db=db, model_id=model.id)
    if run is None:
        return []
    first = registry.first_version_number(run)
    version = registry.get_version(db=db, model_id=model.id, number=first)
    if version is None or not store.exists(version.weights_key):
        return []
    withdrawn = db.scalar(select(VersionWithdrawal).where(VersionWithdrawal.version_id == version.id))
    if withdrawn is None or not withdrawn.in_force(now):
        return []
    state, _figures = compaction.lineage_state(db=db, model=model, run=run)
    deadline = deadline_of(policy_of(model.erasure_policy), state)
    if deadline is None or deadline > now:
        return []
    return [{"kind": "withdrawn-version-blob", "model": model.name, "key": version.weights_key,
             "version": version.number, "run_id": run.run_id}]
