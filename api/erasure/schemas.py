"""Pydantic v2 shapes of the erasure API (request bodies and responses)."""

from __future__ import annotations

import hashlib
import json
import re
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from api.datasets.schemas import NAME_PATTERN
from api.erasure.states import JobStatus, RequestStatus
from unlearning_core.methods import method_names
from unlearning_core.methods.auto import AUTO
from unlearning_core.vocab import Guarantee

MAX_SAMPLE_IDS = 10_000
MAX_MODELS = 100
#: More names than any method has options: a bound on work, not a rule of any method.
MAX_METHOD_OPTIONS = 64


def _dedupe(values: list[str]) -> list[str]:
    return list(dict.fromkeys(values))


class ErasureRequestCreate(BaseModel):
    """What to erase (a data subject, sample ids, or both), from which models, and how."""

    model_config = ConfigDict(
        extra="forbid",
        str_strip_whitespace=True,
        json_schema_extra={
            "examples": [
                {"subject_id": "subject-0007"},
                {"sample_ids": ["17", "42"], "models": ["demo-digits"]},
                {
                    "subject_id": "subject-0007",
                    "method": "partial-amnesiac",
                    "method_options": {"prune_last": 0.6, "recovery_steps": 20},
                },
            ]
        },
    )

    subject_id: str | None = Field(
        default=None, min_length=1, max_length=256, description="data-subject id"
    )
    sample_ids: list[str] | None = Field(
        default=None,
        max_length=MAX_SAMPLE_IDS,
        description="sample ids (training samples of the models' datasets)",
    )
    models: list[str] | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_MODELS,
        description="target model names; default: every ready model whose training data held the samples",
    )
    method: str | None = Field(
        default=None,
        description="unlearning method overriding each model's default (`lethe methods` lists them)",
    )
    method_options: dict[str, Any] | None = Field(
        default=None,
        max_length=MAX_METHOD_OPTIONS,
        description="options of the unlearning method (`lethe methods` lists each method's, "
        "with defaults and bounds), checked against `method` if given, else against each "
        "target model's default method; an unknown option or a bad value is a 422",
    )

    @field_validator("sample_ids", "models")
    @classmethod
    def _ids(cls, values: list[str] | None, info: ValidationInfo) -> list[str] | None:
        if values is None:
            return None
        for v in values:
            if not v or len(v) > 256:
                raise ValueError("ids must be 1 to 256 characters")
            if "\x00" in v:  # no database can store it, no dataset or model can hold it
                raise ValueError("ids cannot contain a NUL character")
            if info.field_name == "models" and not re.fullmatch(NAME_PATTERN, v):
                raise ValueError(f"{v!r} is not a model name (letters, digits, '.', '_', '-')")
        return _dedupe(values)

    @field_validator("subject_id")
    @classmethod
    def _subject(cls, value: str | None) -> str | None:
        if value is not None and "\x00" in value:
            raise ValueError("subject_id cannot contain a NUL character")
        return value

    @field_validator("method")
    @classmethod
    def _method(cls, value: str | None) -> str | None:
        if value is not None and value != AUTO and value not in method_names():
            raise ValueError(
                f"unknown unlearning method {value!r}; known: auto, {', '.join(method_names())}"
            )
        return value

    @field_validator("method_options")
    @classmethod
    def _options(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        # {} asks for nothing beyond the defaults: the same request (and body hash) as none.
        return value or None

    @model_validator(mode="after")
    def _something(self) -> ErasureRequestCreate:
        if not self.subject_id and not self.sample_ids:
            raise ValueError("name what to erase: give subject_id and/or a non-empty sample_ids")
        return self

    def canonical_sha256(self) -> str:
        """sha256 of the body as canonical JSON (what the Idempotency-Key is bound to)."""
        body = self.model_dump(mode="json", exclude_none=True)
        return hashlib.sha256(
            json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
        ).hexdigest()


class ErasureRequestAccepted(BaseModel):
    id: str
    status: RequestStatus
    status_url: str
    due_at: datetime


class VersionOut(BaseModel):
    number: int
    weights_sha256: str
    metrics: dict[str, Any]


class JobOut(BaseModel):
    job_id: int
    model: str
    method: str
    method_options: dict[str, Any] | None = Field(
        description="the method's options as validated for this job (defaults filled in); "
        "null: the method's defaults"
    )
    status: JobStatus
    progress: float
    step: str | None
    error: str | None
    attempts: int
    device: str | None
    started_at: datetime | None
    finished_at: datetime | None
    details: dict[str, Any]
    version: VersionOut | None = Field(description="the version answering the job (its newest tier)")
    guarantee: Guarantee = Field(
        description="exact once a version that never saw the samples answers the job (SISA, "
        "retrain, a compaction, or a lineage that never trained on them); approximate before"
    )
    approximate_version: int | None = Field(
        description="the version of the fast (approximate) answer; null if the first answer was exact"
    )
    exact_version: int | None = Field(description="the version that made the job exact")
    exact_at: datetime | None = Field(description="when the job became exact")
    exact_due_at: datetime = Field(
        description="when it must be exact: the model's compact_within_days after the request "
        "was received, at the latest the request's due_at"
    )
    reapplies_job_id: int | None = Field(
        description="set on a job that applies the erasure again on a compaction's new lineage "
        "(the samples were erased while the compaction trained): the job it repeats"
    )


class RequestStatusOut(BaseModel):
    id: str
    status: RequestStatus
    subject_id: str | None
    sample_ids: list[str]
    method: str | None
    received_at: datetime
    due_at: datetime
    overdue: bool = Field(
        description="due_at has passed and the request is not final, or not exact on every model"
    )
    exact: bool = Field(description="completed, and every model's job is exact")
    completed_at: datetime | None
    error: str | None
    jobs: list[JobOut]


class RequestSummary(BaseModel):
    id: str
    status: RequestStatus
    subject_id: str | None
    sample_count: int
    models: list[str]
    received_at: datetime
    due_at: datetime
    overdue: bool
    exact: bool
    completed_at: datetime | None
    error: str | None


class RequestPage(BaseModel):
    items: list[RequestSummary]
    total: int
    limit: int
    offset: int


class RequestStats(BaseModel):
    counts: dict[str, int] = Field(
        description="requests per status (every status listed, zeros included)"
    )
    total: int
    overdue: int = Field(
        description="requests past their due date that are not final, or not exact on every model"
    )
    completed: int
    mean_seconds_to_complete: float | None = Field(
        description="mean of completed_at - received_at; null if none"
    )


class ActionBody(BaseModel):
    """Optional body of the admin actions."""

    model_config = ConfigDict(extra="forbid")
    reason: str | None = Field(default=None, max_length=1000)


class AuditEventOut(BaseModel):
    seq: int
    kind: str
    request_id: str | None
    model_name: str | None
    actor: str | None
    payload: dict[str, Any]
    created_at: datetime
    prev_hash: str
    hash: str
