"""Erased samples inside the manifests uploaded to Lethe (``POST /datasets/upload``).

An uploaded ``.npz`` is data Lethe stores, so removing an erased subject from it is Lethe's
duty (a built-in dataset or a server path is its owner's: nothing of those is touched).
Once a sample is tombstoned (its request completed) and nothing needs its image any more,
the sweep rewrites the upload with that image overwritten by zeros (:mod:`api.purge.redact`
says why rows are blanked, not dropped), in place: the same path, so every run's
``run.json`` and the dataset row keep naming it. The database records the new sha256 and
size (``info["upload"]``, with the upload's ``received_sha256``), and the audit chain a
``upload.rewritten`` event naming both contents and the requests whose samples went.

**Needed until**: a sample's image is still read while a job of a model of the dataset that
names it is open (queued, running, failed and retriable: an erasure applied late on a model
that trained meanwhile, or again on a compaction's new lineage, evaluates its forget set)
and while any model of the dataset trains (its late jobs are not filed yet). No other grace:
no serving system reads an upload.

**Crash safety** (kill -9 anywhere): the new content goes to a temporary file beside the
upload (fsynced), then an ``upload.rewrite_started`` event (old and new sha256) is committed
in a transaction of its own, then the file replaces the upload (``os.replace``, atomic: the
path holds the old or the new bytes, never neither), then the dataset row and the
``upload.rewritten`` event are committed. A sweep that finds the upload holding the new
bytes of a started rewrite that never committed records it (nothing is written twice); one
that finds the old bytes starts over. Any other content is refused (changed outside Lethe).
The dataset row is locked (``FOR NO KEY UPDATE SKIP LOCKED``) for the whole rewrite, so two
sweeps never rewrite one upload at once.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from api.audit.models import AuditEvent
from api.audit.service import append as audit
from api.database.core import utcnow
from api.datasets import service as datasets
from api.datasets.models import Dataset, Sample
from api.erasure.models import RequestJob
from api.jobs.states import JobState
from api.purge import redact
from api.registry.models import Model, TrainingRun
from unlearning_core.errors import LetheError

SessionFactory = Callable[[], Session]

REASON = "erased-sample-data"
STARTED = "upload.rewrite_started"
REWRITTEN = "upload.rewritten"

#: Job states in which a job may still read its samples' images.
_DONE_JOBS = (JobState.COMPLETED, JobState.CANCELLED)
#: Training states in which a model of the dataset is still being trained.
_TRAINING = (JobState.PENDING, JobState.QUEUED, JobState.RUNNING)


class UploadChangedError(LetheError):
    """The upload's bytes are not what Lethe recorded: it is left alone."""


def upload_info(dataset: Dataset) -> dict[str, Any] | None:
    """``info["upload"]`` of an uploaded dataset; None for any other."""
    info = dataset.info if isinstance(dataset.info, dict) else {}
    upload = info.get("upload")
    return upload if isinstance(upload, dict) else None


def removed_ids(dataset: Dataset) -> set[str]:
    """The samples whose images are gone from the stored upload. Read from the file itself,
    and only when the database says some are (an upload never rewritten is not opened)."""
    upload = upload_info(dataset)
    if not upload or not int(upload.get("erased_samples") or 0):
        return set()
    return redact.erased_ids(Path(dataset.source))


@dataclass(frozen=True)
class UploadPlan:
    """What the sweep may remove from one upload now."""

    dataset: str
    path: str
    pending: tuple[str, ...]  # erased, not removed yet, needed by nothing
    held: int  # erased, not removed yet, still needed
    why_held: str | None = None


def plan(*, db: Session, dataset: Dataset) -> UploadPlan:
    """The erased samples the sweep may remove from ``dataset``'s upload now (see the module
    doc: tombstoned, not removed yet, not needed by an open job or a training)."""
    upload = upload_info(dataset)
    empty = UploadPlan(dataset.name, dataset.source, (), 0)
    if upload is None:
        return empty
    tombstoned = Sample.dataset_id == dataset.id, Sample.erased_at.is_not(None)
    count = db.scalar(select(func.count(Sample.id)).where(*tombstoned)) or 0
    if count <= int(upload.get("erased_samples") or 0):
        return empty  # every erased sample is out already (both counts only grow)
    left = set(db.scalars(select(Sample.sample_id).where(*tombstoned))) - removed_ids(dataset)
    if not left:
        return empty
    models = select(Model.id).where(Model.dataset_id == dataset.id)
    training = db.scalar(
        select(TrainingRun.id)
        .where(TrainingRun.model_id.in_(models), TrainingRun.status.in_(_TRAINING))
        .limit(1)
    )
    if training is not None:
        return UploadPlan(dataset.name, dataset.source, (), len(left), "a model of the dataset is training")
    held: set[str] = set()
    for sample_ids in db.scalars(
        select(RequestJob.sample_ids).where(
            RequestJob.model_id.in_(models), RequestJob.status.not_in(_DONE_JOBS)
        )
    ):
        held.update(sample_ids or ())
    pending = tuple(sorted(left - held))
    kept = len(left) - len(pending)
    return UploadPlan(dataset.name, dataset.source, pending, kept,
                      "open erasure jobs still evaluate them" if kept else None)


@dataclass(frozen=True)
class Rewrite:
    """One upload rewritten (the ``upload.rewritten`` event's payload)."""

    payload: dict[str, Any]

    @property
    def samples(self) -> int:
        return int(self.payload["samples"])


def purge(*, session_factory: SessionFactory, dataset_id: int, now: datetime | None = None) -> Rewrite | None:
    """Remove from the dataset's upload what :func:`plan` allows (see the module doc for
    the steps); the rewrite, or None when there was nothing to do (or another sweep holds
    the dataset). Raises on a file it cannot read or write, or one changed outside Lethe."""
    now = now or utcnow()
    with session_factory() as db:
        dataset = db.scalar(
            select(Dataset)
            .where(Dataset.id == dataset_id)
            .with_for_update(key_share=True, skip_locked=True)
        )
        if dataset is None or upload_info(dataset) is None:
            return None
        path = Path(dataset.source)
        tmp = path.with_name(f".{path.name}.purge")
        resumed = _finish_interrupted(db, dataset, path, now)
        if resumed is not None:
            tmp.unlink(missing_ok=True)
            return resumed
        todo = plan(db=db, dataset=dataset)
        if not todo.pending:
            return None
        upload = upload_info(dataset) or {}
        data = path.read_bytes()
        found = hashlib.sha256(data).hexdigest()
        if found != upload.get("sha256"):
            raise UploadChangedError(
                f"upload {path} of dataset {dataset.name!r} has sha256 {found}, not the "
                f"{upload.get('sha256')} Lethe recorded: changed outside Lethe, left alone"
            )
        try:
            new = redact.rewrite(data, todo.pending, tmp)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        intent = {
            "dataset": dataset.name,
            "dataset_id": dataset.id,
            "path": dataset.source,
            "from_sha256": found,
            "from_size": len(data),
            "to_sha256": new.sha256,
            "to_size": new.size,
            "samples": new.newly,
            "erased_samples": len(new.erased),
            "request_ids": _requests(db, dataset, todo.pending),
            "dropped_arrays": list(new.dropped_keys),
        }
        del data
        _journal(session_factory, dataset, intent)
        _replace(tmp, path)
        return _record(db, dataset, intent, now, resumed=False)


def _finish_interrupted(db: Session, dataset: Dataset, path: Path, now: datetime) -> Rewrite | None:
    """A rewrite that replaced the upload but died before its commit: record it now."""
    upload = upload_info(dataset) or {}
    event = db.scalar(
        select(AuditEvent)
        .where(AuditEvent.kind == STARTED, AuditEvent.payload["path"].as_string() == dataset.source)
        .order_by(AuditEvent.seq.desc())
        .limit(1)
    )
    intent = event.payload if event is not None else None
    if not intent or intent.get("from_sha256") != upload.get("sha256") or not path.is_file():
        return None
    sha256, _size = redact.file_sha256(path)
    if sha256 != intent.get("to_sha256"):
        return None  # died before replacing: the upload is still the recorded one
    return _record(db, dataset, intent, now, resumed=True)


def _requests(db: Session, dataset: Dataset, sample_ids: tuple[str, ...]) -> list[str]:
    """The requests whose samples these are: those that erased them and any later one of
    the dataset's models that named them too."""
    wanted = set(sample_ids)
    found: set[str] = set()
    for start in range(0, len(sample_ids), 5000):
        found.update(
            r
            for r in db.scalars(
                select(Sample.erased_by_request).where(
                    Sample.dataset_id == dataset.id, Sample.sample_id.in_(sample_ids[start : start + 5000])
                )
            )
            if r
        )
    for request_id, ids in db.execute(
        select(RequestJob.request_id, RequestJob.sample_ids)
        .join(Model, Model.id == RequestJob.model_id)
        .where(Model.dataset_id == dataset.id, RequestJob.status == JobState.COMPLETED)
    ):
        if wanted.intersection(ids or ()):
            found.add(request_id)
    return sorted(found)


def _journal(session_factory: SessionFactory, dataset: Dataset, intent: dict[str, Any]) -> None:
    """Commit ``upload.rewrite_started`` before the upload is replaced (its own transaction:
    the rewrite's own holds the dataset row until it is recorded)."""
    with session_factory() as db:
        audit(db, STARTED, actor="purge", tenant=dataset.tenant, payload=intent)
        db.commit()


def _replace(tmp: Path, path: Path) -> None:
    """``tmp`` becomes ``path`` atomically; the folder is fsynced so the rename is durable."""
    os.replace(tmp, path)
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _record(db: Session, dataset: Dataset, intent: dict[str, Any], now: datetime, *, resumed: bool) -> Rewrite:
    """The dataset row says what the upload now holds; ``upload.rewritten`` says what went.
    Commits (and with it releases the dataset row)."""
    datasets.record_upload_rewrite(
        dataset=dataset, sha256=intent["to_sha256"], size=intent["to_size"],
        erased_samples=intent["erased_samples"], at=now,
    )
    payload = {**intent, "resumed": resumed}
    audit(db, REWRITTEN, actor="purge", tenant=dataset.tenant, payload=payload)
    db.commit()
    return Rewrite(payload)


def rewrites_for(*, db: Session, request_id: str, paths: list[str]) -> list[AuditEvent]:
    """The ``upload.rewritten`` events of these uploads that removed samples of ``request_id``."""
    if not paths:
        return []
    return [
        e
        for e in db.scalars(
            select(AuditEvent)
            .where(AuditEvent.kind == REWRITTEN, AuditEvent.payload["path"].as_string().in_(paths))
            .order_by(AuditEvent.seq)
        )
        if request_id in ((e.payload or {}).get("request_ids") or [])
    ]
