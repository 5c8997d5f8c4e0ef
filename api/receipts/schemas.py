"""The erasure receipt's shape (pydantic v2): what is signed, field by field.

Every field is computed from the database at issue time; nothing is stored. The document
grows as the request moves through its tiers, and ``stage`` says how far it got.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, Field

from api.erasure.states import JobStatus, RequestStatus
from unlearning_core.receipts import ALG, FORMAT


class Stage(StrEnum):
    """How far the erasure got, each stage including the ones before it."""

    #: Filed, not answered on every target model (queued, running, failed, awaiting
    #: approval), or stopped for good (denied, cancelled: ``status`` says which).
    RECEIVED = "received"
    #: Every target model publishes a version with the samples' influence removed approximately.
    APPROXIMATE = "approximate"
    #: Every target model publishes a version never trained on the samples.
    EXACT = "exact"
    #: Exact, and nothing Lethe stores of the request is left for the purge to delete: the
    #: older versions' weights and reports, the subtracted steps' updates, the replaced
    #: lineages, superseded SISA checkpoints, the samples inside uploads
    #: (:mod:`api.purge.account`; ``purge.remaining`` is empty).
    PURGED = "purged"


class VersionRef(BaseModel):
    number: int
    method: str = Field(description="how the version was made (train, compact, an unlearning method)")
    weights_sha256: str
    published_at: datetime


class JobAnswer(BaseModel):
    """One job of the request on the model and the versions that answer it."""

    job_id: int
    method: str
    status: JobStatus
    samples: int = Field(description="training samples of the model's dataset it forgets")
    reapplies_job_id: int | None = Field(
        description="the erasure applied again on a compaction's new lineage: the job it repeats"
    )
    approximate_version: VersionRef | None = Field(
        description="the version of the approximate answer; null if none, or if the first answer was exact"
    )
    exact_version: VersionRef | None = Field(description="the version never trained on the samples")
    exact_at: datetime | None


class WithdrawnVersion(BaseModel):
    number: int
    weights_sha256: str
    reason: str = Field(description="erasure or compaction")
    successor_number: int
    decided_at: datetime
    effective_at: datetime = Field(description="from then on its weights and report answer 410 Gone")
    in_force: bool = Field(description="effective_at had passed when the receipt was issued")


class ModelAnswer(BaseModel):
    model: str
    guarantee: Literal["none", "approximate", "exact"] = Field(
        description="the weakest tier among the model's jobs not cancelled; none: not answered yet"
    )
    jobs: list[JobAnswer]
    versions_withdrawn: list[WithdrawnVersion] = Field(
        description="versions older than the newest one answering the request (they held the "
        "subject's data or its approximate residue), withdrawn or scheduled to be"
    )
    versions_not_withdrawn: list[int] = Field(
        description="such older versions with no withdrawal: still served (should be empty)"
    )


class BlobDeleted(BaseModel):
    key: str
    sha256: str
    bytes: int


class PurgeLeft(BaseModel):
    """Something that held the request's data and that the purge has not deleted yet."""

    kind: str = Field(description="what it is, as the purge names it: withdrawn-version, subtracted-step, "
                      "replaced-lineage, superseded-checkpoint, erased-sample-data")
    where: str = Field(description="the model or dataset")
    key: str = Field(description="the blob key, key prefix or stored file")
    detail: str = Field(description="why it is still there")


class UploadRewrite(BaseModel):
    """An uploaded manifest rewritten by the purge without the images of erased samples,
    some of them the request's (the file keeps its path; its old bytes are gone)."""

    dataset: str
    sha256_before: str
    bytes_before: int
    sha256_after: str
    bytes_after: int
    samples_removed: int = Field(description="samples blanked by this rewrite, over every request")
    rewritten_at: datetime


class PurgeRecord(BaseModel):
    """What the purge did for the request so far, and what it still has to delete."""

    complete: bool = Field(description="nothing of the request is left for the purge (remaining is empty)")
    completed_at: datetime | None = Field(
        description="when complete: the time of the last deletion it rests on; null while not complete"
    )
    remaining: list[PurgeLeft]
    uploads_rewritten: list[UploadRewrite]


class DataDisposition(BaseModel):
    """The raw training data of the erased samples, per dataset."""

    dataset: str
    kind: Literal["built-in", "server-path", "upload"] = Field(
        description="built-in (digits, fashion-mnist), a path on the server, or a manifest uploaded to Lethe"
    )
    samples: int
    tombstoned: int = Field(description="samples marked erased: no later training or compaction uses them")
    raw_data_deleted: bool = Field(
        description="whether Lethe deleted the raw samples: true once the purge removed them from "
        "an upload; always false for data Lethe does not own"
    )
    owner_duty: bool = Field(
        description="deleting the raw data is its owner's duty, not Lethe's (built-in and server-path data)"
    )
    note: str
    sample_ids: list[str]


class AuditEntry(BaseModel):
    seq: int
    kind: str
    model_name: str | None
    actor: str | None
    payload: dict[str, Any]
    created_at: datetime
    prev_hash: str
    hash: str


class ChainHead(BaseModel):
    """The newest event of the whole audit chain at issue time (seq 0 and 64 zeros: empty)."""

    seq: int
    hash: str


class AuditSection(BaseModel):
    events: list[AuditEntry] = Field(description="the request's events, in chain order")
    chain_head: ChainHead


class Receipt(BaseModel):
    """The signed content (``receipt`` of the document)."""

    format: Literal["lethe.erasure-receipt/1"] = FORMAT
    request_id: str
    tenant: str
    subject_id: str | None
    sample_ids_named: list[str] = Field(description="sample ids the request named (besides the subject)")
    samples: int = Field(description="training samples erased, over every dataset")
    status: RequestStatus
    stage: Stage
    statement: str = Field(description="what the stage means for this request, in words")
    received_at: datetime
    due_at: datetime
    completed_at: datetime | None
    models: list[ModelAnswer]
    blobs_deleted: list[BlobDeleted] = Field(
        description="each blob the purge deleted that held the request's data (recorded deletions only)"
    )
    purge: PurgeRecord | None = Field(
        description="the purge's record for the request; null while it has deleted nothing of it"
    )
    data: list[DataDisposition]
    audit: AuditSection
    issued_at: datetime


class Signature(BaseModel):
    alg: Literal["Ed25519"] = ALG
    key_id: str = Field(description="first 16 hex digits of the sha256 of the raw public key")
    value: str = Field(description="base64 of the Ed25519 signature over the receipt's canonical JSON")


class SignedReceipt(BaseModel):
    receipt: Receipt
    signature: Signature


class ReceiptKey(BaseModel):
    alg: Literal["Ed25519"] = ALG
    key_id: str
    public_key: str = Field(description="base64 of the raw 32-byte public key")
    pem: str = Field(description="the same key as PEM (SubjectPublicKeyInfo)")
