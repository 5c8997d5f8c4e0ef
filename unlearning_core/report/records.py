"""What each published erasure leaves beside its run, for reports written later.

The ledger says which version came from which and which batches were subtracted; it does
not keep what a report needs to be rebuilt (the forget set of *this* version, its
timeline points, its metrics). One small JSON per version, ``runs/<id>/erasures/vNNNN.json``,
written once the version is published, keeps that. A missing record (a version made before
reports existed) only leaves those sections of the report empty.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, Field

from unlearning_core.errors import BlobNotFoundError
from unlearning_core.report.timeline import TimelinePoint, TrainingTimeline
from unlearning_core.store import BlobRef, BlobStore


def record_key(prefix: str, version: int) -> str:
    return f"{prefix}/erasures/v{version:04d}.json"


class ErasureRecord(BaseModel):
    version: int
    parent: int | None
    method: str
    guarantee: str
    forget: str  # how the forget set was named (ids / classes / subjects)
    forget_ids: list[str]
    forget_classes: list[int]  # labels present in the forget set (the Grad-CAM panel)
    recovery_steps: int = 0
    #: The options the method ran with (its options model, defaults filled in).
    method_options: dict[str, Any] = Field(default_factory=dict)
    timeline: list[TimelinePoint] = Field(default_factory=list)
    metrics: dict[str, Any] | None = None
    created_at: datetime = Field(default_factory=lambda: datetime.now(UTC))


def save_record(store: BlobStore, prefix: str, record: ErasureRecord) -> BlobRef:
    return store.put_json(record_key(prefix, record.version), record.model_dump(mode="json"))


def load_record(store: BlobStore, prefix: str, version: int) -> ErasureRecord | None:
    try:
        return ErasureRecord.model_validate(store.get_json(record_key(prefix, version)))
    except BlobNotFoundError:
        return None


def load_training_timeline(run: Any) -> TrainingTimeline | None:
    """The run's training timeline (verified against run.json's sha256), if it has one."""
    pointer = getattr(run.spec, "timeline", None)
    if pointer is None:
        return None
    return TrainingTimeline.model_validate(
        run.store.get_json(pointer.key, expected_sha256=pointer.sha256)
    )
