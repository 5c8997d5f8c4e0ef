"""Building and signing an erasure receipt from what the database holds at issue time.

Nothing is stored: every request is answered with a receipt computed afresh, so it grows as
the tiers complete (``received`` -> ``approximate`` -> ``exact`` -> ``purged``) and always
says which stage it reflects. It claims only what the data shows: ``blobs_deleted`` lists
the recorded deletions of the purge sweep (:mod:`api.purge.service`) of blobs that held the
request's data (updates of the steps its jobs subtracted, older versions, replaced
lineages, SISA checkpoints), and ``purge`` what is left of it (:mod:`api.purge.account`).
``purged`` is reached when the request is exact and nothing is left; a sweep that was
interrupted or failed leaves the receipt at ``exact`` with the blobs deleted so far and
the rest in ``purge.remaining``. Raw data: an upload's samples are Lethe's to remove (the
purge does); data Lethe does not own is its owner's to delete, and the receipt lists it.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from api.audit.models import AuditEvent
from api.audit.service import GENESIS, events_for_request
from api.database.core import utcnow
from api.datasets.models import Dataset, Sample
from api.erasure.models import ErasureRequest, RequestJob
from api.erasure.states import JobStatus, RequestStatus
from api.purge import account as purge_account
from api.purge import service as purge
from api.receipts import keys
from api.receipts.schemas import (
    AuditEntry,
    AuditSection,
    BlobDeleted,
    ChainHead,
    DataDisposition,
    JobAnswer,
    ModelAnswer,
    PurgeLeft,
    PurgeRecord,
    Receipt,
    ReceiptKey,
    Stage,
    UploadRewrite,
    VersionRef,
    WithdrawnVersion,
)
from api.registry import withdrawal
from api.registry.models import Model, ModelVersion
from unlearning_core import receipts
from unlearning_core.data.loader import DATASET_NAMES

S = RequestStatus


# ---------------------------------------------------------------------------------------
# Signing
# ---------------------------------------------------------------------------------------


def issue(*, db: Session, request: ErasureRequest) -> bytes:
    """The request's receipt, signed, as the canonical JSON bytes served and filed."""
    key = keys.signing_key()  # before the queries: a misconfigured key fails fast
    return receipts.issue(build(db=db, request=request).model_dump(mode="json"), key)


def public_key() -> ReceiptKey:
    """What ``GET /receipt-key`` serves: the public half of the signing key."""
    public = keys.signing_key().public_key()
    return ReceiptKey(
        key_id=receipts.key_id(public),
        public_key=receipts.public_key_b64(public),
        pem=receipts.public_key_pem(public),
    )


# ---------------------------------------------------------------------------------------
# The receipt
# ---------------------------------------------------------------------------------------


def build(*, db: Session, request: ErasureRequest, now: datetime | None = None) -> Receipt:
    """The receipt's content for ``request`` as the database has it now."""
    now = now or utcnow()
    rows: list[tuple[RequestJob, Model]] = [
        (job, model)
        for job, model in db.execute(
            select(RequestJob, Model)
            .join(Model, Model.id == RequestJob.model_id)
            .where(RequestJob.request_id == request.id)
            .order_by(RequestJob.id)
        )
    ]
    jobs = [job for job, _ in rows]
    models = _models(db, rows, now)
    answered = _stage(request, jobs) != Stage.RECEIVED
    left = purge_account.account(db=db, request_id=request.id, jobs=jobs, now=now) if answered else None
    data = _data(db, rows, left)
    record, blobs = purge_record(db=db, request=request, model_ids=sorted({j.model_id for j in jobs}), left=left)
    stage = _stage(request, jobs, record)
    return Receipt(
        request_id=request.id,
        tenant=request.tenant,
        subject_id=request.subject_id,
        sample_ids_named=list(request.sample_ids or []),
        samples=sum(d.samples for d in data),
        status=RequestStatus(request.status),
        stage=stage,
        statement=_statement(request, stage, jobs, models, data, blobs, record),
        received_at=request.received_at,
        due_at=request.due_at,
        completed_at=request.completed_at,
        models=models,
        blobs_deleted=blobs,
        purge=record,
        data=data,
        audit=_audit(db, request),
        issued_at=now,
    )


def purge_record(
    *, db: Session, request: ErasureRequest, model_ids: list[int], left: purge_account.Account | None = None
) -> tuple[PurgeRecord | None, list[BlobDeleted]]:
    """Each blob the purge deleted that held the request's data (key, sha256, bytes), from
    its records: those naming the request, and those ``left`` (its account, once answered)
    rests on. The record: null while nothing was deleted for it and something is left."""
    rows = purge.deleted_for(db=db, request_id=request.id, model_ids=model_ids)
    keys = {(r.store_url, r.key) for r in rows}
    if left is not None:
        rows += [r for r in left.deleted if (r.store_url, r.key) not in keys]
    rows.sort(key=lambda r: (r.deleted_at, r.id))
    blobs = [BlobDeleted(key=r.key, sha256=r.sha256 or "", bytes=r.size or 0) for r in rows]
    if left is None or not (blobs or left.rewrites or left.complete):
        return None, blobs
    record = PurgeRecord(
        complete=left.complete,
        completed_at=left.completed_at() if left.complete else None,
        remaining=[PurgeLeft(kind=x.kind, where=x.where, key=x.key, detail=x.detail) for x in left.left],
        uploads_rewritten=[
            UploadRewrite(
                dataset=w["dataset"], sha256_before=w["from_sha256"], bytes_before=w["from_size"],
                sha256_after=w["to_sha256"], bytes_after=w["to_size"], samples_removed=w["samples"],
                rewritten_at=w["rewritten_at"],
            )
            for w in left.rewrites
        ],
    )
    return record, blobs


def _active(jobs: Sequence[RequestJob]) -> list[RequestJob]:
    return [j for j in jobs if j.status != JobStatus.CANCELLED]


def _answered(job: RequestJob) -> bool:
    return job.version_id is not None or job.exact_at is not None


def _stage(request: ErasureRequest, jobs: Sequence[RequestJob], purge: PurgeRecord | None = None) -> Stage:
    """From the data: ``approximate`` once the request completed and every job not
    cancelled has a version answering it, ``exact`` once every such job is exact (the
    ``exact`` of the request's status), ``purged`` on top of exact once the purge record is
    complete (nothing of the request left to delete).

    A completed request whose erasure is being applied again on a compaction's new lineage
    (a queued job with ``reapplies_job_id``) is back at ``received``: that lineage's
    versions were trained on the samples, so nothing answers it until the job is done.
    """
    active = _active(jobs)
    if request.status != S.COMPLETED or not active or not all(_answered(j) for j in active):
        return Stage.RECEIVED
    if any(j.exact_at is None for j in active):
        return Stage.APPROXIMATE
    return Stage.PURGED if purge is not None and purge.complete else Stage.EXACT


def _ref(version: ModelVersion | None) -> VersionRef | None:
    if version is None:
        return None
    return VersionRef(
        number=version.number,
        method=version.method,
        weights_sha256=version.weights_sha256,
        published_at=version.created_at,
    )


def _guarantee(jobs: Sequence[RequestJob]) -> str:
    active = _active(jobs)
    if active and all(j.exact_at is not None for j in active):
        return "exact"
    if active and all(_answered(j) for j in active):
        return "approximate"
    return "none"


def _models(db: Session, rows: Sequence[tuple[RequestJob, Model]], now: datetime) -> list[ModelAnswer]:
    """Per target model: its jobs with the versions answering them, and what became of the
    older versions (which held the subject's data, or its approximate residue)."""
    ids = {v for job, _ in rows for v in (job.version_id, job.exact_version_id) if v is not None}
    versions = (
        {v.id: v for v in db.scalars(select(ModelVersion).where(ModelVersion.id.in_(ids)))}
        if ids
        else {}
    )
    by_model: dict[int, tuple[Model, list[RequestJob]]] = {}
    for job, model in rows:
        by_model.setdefault(model.id, (model, []))[1].append(job)

    answers: list[ModelAnswer] = []
    for model, jobs in by_model.values():
        job_answers: list[JobAnswer] = []
        newest: int | None = None
        for job in jobs:
            version = versions.get(job.version_id) if job.version_id is not None else None
            exact = versions.get(job.exact_version_id) if job.exact_version_id is not None else None
            # the first answer was exact: it is no approximate one (as in the request's status)
            approximate = version if version is not None and version.id != job.exact_version_id else None
            for v in (version, exact):
                if v is not None and (newest is None or v.number > newest):
                    newest = v.number
            job_answers.append(
                JobAnswer(
                    job_id=job.id,
                    method=job.method,
                    status=JobStatus(job.status),
                    samples=len(job.sample_ids or []),
                    reapplies_job_id=job.reapplies_job_id,
                    approximate_version=_ref(approximate),
                    exact_version=_ref(exact),
                    exact_at=job.exact_at,
                )
            )
        withdrawn, kept = _older_versions(db, model, newest, now)
        answers.append(
            ModelAnswer(
                model=model.name,
                guarantee=_guarantee(jobs),  # type: ignore[arg-type]
                jobs=job_answers,
                versions_withdrawn=withdrawn,
                versions_not_withdrawn=kept,
            )
        )
    return answers


def _older_versions(
    db: Session, model: Model, newest: int | None, now: datetime
) -> tuple[list[WithdrawnVersion], list[int]]:
    """The model's versions older than ``newest`` (the newest answering the request): the
    withdrawn ones, and the numbers of those without a withdrawal."""
    if newest is None:
        return [], []
    older = list(
        db.scalars(
            select(ModelVersion)
            .where(ModelVersion.model_id == model.id, ModelVersion.number < newest)
            .order_by(ModelVersion.number)
        )
    )
    gone = withdrawal.of_versions(db=db, version_ids=[v.id for v in older])
    withdrawn = [
        WithdrawnVersion(
            number=v.number,
            weights_sha256=v.weights_sha256,
            reason=w.reason,
            successor_number=w.successor_number,
            decided_at=w.decided_at,
            effective_at=w.effective_at,
            in_force=w.in_force(now),
        )
        for v in older
        if (w := gone.get(v.id)) is not None
    ]
    return withdrawn, [v.number for v in older if v.id not in gone]


def _kind(dataset: Dataset) -> str:
    if isinstance(dataset.info, dict) and "upload" in dataset.info:
        return "upload"
    if dataset.source.strip().lower() in DATASET_NAMES:
        return "built-in"
    return "server-path"


#: What happens to the raw data, per kind of dataset.
NOTES = {
    "built-in": (
        "A built-in dataset that Lethe reads from its source and does not own: Lethe deleted "
        "none of its raw data and never will; deleting these samples (sample_ids) at the source "
        "is the owner's duty."
    ),
    "server-path": (
        "A dataset Lethe reads from a path on the server and does not own: Lethe deleted none "
        "of its raw data and never will; deleting these samples (sample_ids) there is the "
        "owner's duty."
    ),
    "upload": (
        "A manifest uploaded to Lethe: Lethe still keeps these samples' images in the stored "
        "upload; the purge removes them once no open job or training of the dataset's models "
        "needs them. Copies kept outside Lethe are their holder's to delete."
    ),
    "upload-removed": (
        "A manifest uploaded to Lethe: the purge overwrote these samples' images in the stored "
        "upload with zeros (purge.uploads_rewritten: the file's sha256 before and after); each "
        "sample's id, label and subject id stay, as in Lethe's database, as the tombstone. "
        "Copies kept outside Lethe are their holder's to delete."
    ),
}


def _data(
    db: Session, rows: Sequence[tuple[RequestJob, Model]], left: purge_account.Account | None = None
) -> list[DataDisposition]:
    """The erased samples per dataset, how many are tombstoned, and who deletes the raw data."""
    wanted: dict[int, list[str]] = {}
    for job, model in rows:
        ids = wanted.setdefault(model.dataset_id, [])
        ids.extend(s for s in job.sample_ids or [] if s not in ids)
    if not wanted:
        return []
    datasets = {d.id: d for d in db.scalars(select(Dataset).where(Dataset.id.in_(list(wanted))))}
    out: list[DataDisposition] = []
    for dataset_id, sample_ids in sorted(wanted.items()):
        dataset = datasets[dataset_id]
        tombstoned = int(
            db.scalar(
                select(func.count(Sample.id)).where(
                    Sample.dataset_id == dataset_id,
                    Sample.sample_id.in_(sample_ids),
                    Sample.erased_at.is_not(None),
                )
            )
            or 0
        )
        kind = _kind(dataset)
        deleted = kind == "upload" and left is not None and left.uploads_done.get(dataset_id, False)
        note = NOTES["upload-removed" if deleted else kind]
        if tombstoned:
            note += " The tombstoned samples are left out of every later training and compaction."
        out.append(
            DataDisposition(
                dataset=dataset.name,
                kind=kind,  # type: ignore[arg-type]
                samples=len(sample_ids),
                tombstoned=tombstoned,
                raw_data_deleted=deleted,
                owner_duty=kind != "upload",
                note=note,
                sample_ids=sample_ids,
            )
        )
    return out


def _audit(db: Session, request: ErasureRequest) -> AuditSection:
    """The request's events and the chain's head, read head first so that every event
    listed is in the chain the head closes."""
    head = db.scalar(select(AuditEvent).order_by(AuditEvent.seq.desc()).limit(1))
    top = head.seq if head is not None else 0
    events = [
        AuditEntry(
            seq=e.seq,
            kind=e.kind,
            model_name=e.model_name,
            actor=e.actor,
            payload=e.payload or {},
            created_at=e.created_at,
            prev_hash=e.prev_hash,
            hash=e.hash,
        )
        for e in events_for_request(db, request.id)
        if e.seq <= top
    ]
    return AuditSection(
        events=events,
        chain_head=ChainHead(seq=top, hash=head.hash if head is not None else GENESIS),
    )


def _statement(
    request: ErasureRequest,
    stage: Stage,
    jobs: Sequence[RequestJob],
    models: Sequence[ModelAnswer],
    data: Sequence[DataDisposition],
    blobs: Sequence[BlobDeleted] = (),
    purge: PurgeRecord | None = None,
) -> str:
    """The receipt in words: what the stage means here and what has not happened yet."""
    status = RequestStatus(request.status)
    answered = any(j.version_id is not None or j.exact_version_id is not None for j in jobs)
    if status == S.DENIED:
        parts = ["The request was denied by an administrator: no model was changed for it."]
    elif status == S.CANCELLED:
        parts = [
            "The request was cancelled before every target model answered it"
            + (
                "; the versions published for it before that are listed."
                if answered
                else ": no model was changed for it."
            )
        ]
    elif status == S.FAILED:
        parts = [
            (
                "Unlearning failed on a target model; the request waits for an administrator "
                "to retry or cancel it."
            )
        ]
    elif status == S.AWAITING_APPROVAL:
        parts = ["The request awaits an administrator's approval: no model was changed for it yet."]
    elif stage == Stage.RECEIVED and status == S.COMPLETED:
        parts = [
            (
                "The request was answered, but a compaction's new lineage was trained on the "
                "samples meanwhile: the erasure is being applied to it again (reapplies_job_id), "
                "and until then the newest versions hold them."
            )
        ]
    elif stage == Stage.RECEIVED:
        parts = ["The request is being worked on: not every target model answers it yet."]
    elif stage == Stage.APPROXIMATE:
        parts = [
            (
                "Every target model publishes a version from which the samples' influence was "
                "removed approximately (each version's metrics are the evidence); a version never "
                f"trained on them (the exact tier) is due by {request.due_at.isoformat()} at the latest."
            )
        ]
    elif stage == Stage.EXACT:
        parts = ["Every target model publishes a version never trained on the samples (exact)."]
    else:
        parts = [
            (
                "Every target model publishes a version never trained on the samples (exact), and "
                "nothing Lethe stores of them is left for the purge to delete (purged)."
            )
        ]
    if any(m.versions_withdrawn for m in models):
        parts.append(
            "Older versions that held the data are withdrawn: from their effective_at their "
            "weights and reports answer 410 Gone."
        )
    if any(m.versions_not_withdrawn for m in models):
        parts.append("Some older versions are not withdrawn (versions_not_withdrawn) and are still served.")
    if blobs and stage == Stage.PURGED:
        parts.append(f"The purge deleted {len(blobs)} stored blob(s) that held the data (blobs_deleted).")
    elif blobs:
        parts.append(
            f"The purge deleted {len(blobs)} stored blob(s) that held the data (blobs_deleted); "
            "it goes on as withdrawals come into force and compactions replace lineages."
        )
    else:
        parts.append("No stored blob holding the data has been deleted yet (blobs_deleted is empty).")
    if purge is not None and purge.remaining:
        parts.append(f"{len(purge.remaining)} item(s) holding the data are not deleted yet (purge.remaining).")
    removed = [d.dataset for d in data if d.raw_data_deleted]
    if removed:
        parts.append(f"The purge removed the samples from the stored upload of {', '.join(removed)}.")
    if any(d.kind == "upload" and not d.raw_data_deleted for d in data):
        parts.append("An upload stored by Lethe still holds some of the samples (data).")
    owners = [d.dataset for d in data if d.owner_duty]
    if owners:
        parts.append(
            f"Lethe does not own the raw data of {', '.join(owners)}: deleting those samples "
            "(data[].sample_ids) at their source is the owner's duty."
        )
    return " ".join(parts)
