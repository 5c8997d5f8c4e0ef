"""Bodies and answers of the compaction endpoints."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from unlearning_core.compaction import CompactionPolicy


class PolicyPatch(CompactionPolicy):
    """The fields of the erasure policy to change (others keep their value); ``null``
    turns a trigger off. Same bounds as at ``POST /models``."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    @model_validator(mode="after")
    def _something(self) -> PolicyPatch:
        if not self.model_fields_set:
            raise ValueError(
                "name at least one of " + ", ".join(CompactionPolicy.model_fields)
            )
        return self

    def changes(self) -> dict[str, Any]:
        return self.model_dump(mode="json", include=self.model_fields_set)


class CompactionOut(BaseModel):
    model: str
    run_id: str
    status: str = Field(description="queued | running | completed | failed")
    trigger: str | None
    error: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    attempts: int


class TriggerOut(BaseModel):
    trigger: str
    threshold: float
    value: float | None
    fires: bool = Field(description="whether it fires now")
    fires_at: datetime | None = Field(default=None, description="deadline trigger: when it fires")


class LineageOut(BaseModel):
    run_id: str
    kind: str = Field(description="train (the first training) or compaction")
    trigger: str | None = Field(description="what asked for the compaction that started it")
    first_version: int
    head_version: int
    started_at: datetime | None = Field(description="when the lineage's run was published")


class AwaitingExactOut(BaseModel):
    requests: int = Field(description="requests answered approximately only on this model")
    oldest_received_at: datetime | None
    oldest_exact_due_at: datetime | None = Field(
        description="when the oldest must be exact by the policy (compact_within_days)"
    )
    earliest_due_at: datetime | None = Field(description="the earliest legal due date among them")


class ModelHealth(BaseModel):
    model: str
    method: str
    status: str
    exact_by_construction: bool = Field(
        description="SISA: every erasure retrains the shards that held the data; nothing to compact"
    )
    lineage: LineageOut | None
    versions_since_compaction: int
    recorded_steps: int | None
    subtracted_steps: int
    subtracted_share: float
    first_test_acc: float | None = Field(description="test accuracy of the lineage's first version")
    latest_test_acc: float | None
    accuracy_drift: float | None = Field(description="first_test_acc - latest_test_acc")
    awaiting_exact: AwaitingExactOut
    policy: CompactionPolicy
    triggers: list[TriggerOut]
    next_trigger: str | None = Field(
        description="the trigger that fires now, else the nearest one (the deadline's when it is set)"
    )
    estimated_compaction_seconds: float | None = Field(
        description="the last training's duration (what a compaction takes, roughly)"
    )
    compaction: CompactionOut | None = Field(description="the newest compaction, whatever its state")
    alerts: list[str] = Field(description="what needs an operator: failed compactions, late requests")
