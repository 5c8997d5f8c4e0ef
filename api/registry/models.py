"""Models, their training runs and their immutable versions."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import JSON, BigInteger, ForeignKey, Index, Integer, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship

from api.database.core import Base, UTCDateTime, utcnow
from api.jobs.states import JobState


class RunKind(StrEnum):
    TRAIN = "train"
    COMPACTION = "compaction"


class Model(Base):
    """A model of one tenant: its name is unique within the tenant, and every other tenant
    gets a 404 for it (its runs, versions and reports follow it)."""

    __tablename__ = "models"
    __table_args__ = (UniqueConstraint("tenant", "name", name="uq_models_tenant_name"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    tenant: Mapped[str] = mapped_column(String(64), default="default", server_default="default")
    name: Mapped[str] = mapped_column(String(128))
    dataset_id: Mapped[int] = mapped_column(ForeignKey("datasets.id"))
    architecture: Mapped[str] = mapped_column(String(64))
    method: Mapped[str] = mapped_column(String(32))  # training method: plain|amnesiac|partial-amnesiac|sisa
    unlearn_method: Mapped[str] = mapped_column(String(32))  # default method for erasure requests
    status: Mapped[str] = mapped_column(String(16), default="training")  # training|ready|failed
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    #: When it is compacted (:class:`unlearning_core.compaction.CompactionPolicy` as JSON);
    #: NULL: the settings' defaults.
    erasure_policy: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)

    runs: Mapped[list[TrainingRun]] = relationship(back_populates="model", lazy="raise")
    versions: Mapped[list[ModelVersion]] = relationship(
        back_populates="model", lazy="raise", order_by="ModelVersion.number"
    )


class TrainingRun(Base):
    """A run in the blob store; ``ledger`` is the lineage ledger (subtracted batches, SISA
    checkpoints), kept here so it changes in the same transaction as the version it makes."""

    __tablename__ = "training_runs"

    id: Mapped[int] = mapped_column(primary_key=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"))
    run_id: Mapped[str] = mapped_column(String(128), unique=True)
    store_url: Mapped[str] = mapped_column(String(1024))
    method: Mapped[str] = mapped_column(String(32))
    config: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    status: Mapped[str] = mapped_column(String(16), default=JobState.QUEUED)  # api.jobs.states.JobState
    error: Mapped[str | None] = mapped_column(String(2000), nullable=True)
    ledger: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    #: Lease columns (:mod:`api.jobs.lease`). Running: the training worker's last sign of
    #: life (stale: abandoned); queued: when a worker last handed the run back.
    heartbeat_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    #: How many times a worker claimed the run; with the id, the attempt token.
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    #: ``train`` (the model's first run) or ``compaction`` (a retraining without every
    #: erased sample: a new lineage, see :mod:`api.compaction`).
    kind: Mapped[str] = mapped_column(String(16), default=RunKind.TRAIN, server_default=RunKind.TRAIN)
    #: What asked for a compaction (:class:`unlearning_core.compaction.Trigger`).
    trigger: Mapped[str | None] = mapped_column(String(32), nullable=True)

    model: Mapped[Model] = relationship(back_populates="runs", lazy="raise")


class ModelVersion(Base):
    """Immutable once written: nothing updates a row of this table."""

    __tablename__ = "model_versions"
    __table_args__ = (UniqueConstraint("model_id", "number", name="uq_model_versions_model_number"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"))
    number: Mapped[int] = mapped_column(Integer)
    parent_number: Mapped[int | None] = mapped_column(Integer, nullable=True)
    method: Mapped[str] = mapped_column(String(32))
    weights_key: Mapped[str] = mapped_column(String(1024))
    weights_sha256: Mapped[str] = mapped_column(String(64))
    weights_size: Mapped[int] = mapped_column(BigInteger)
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # The erasure report (HTML blob), written with the row; NULL when there is none.
    report_key: Mapped[str | None] = mapped_column(String(1024), nullable=True)
    report_sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    report_size: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    report_tenant: Mapped[str | None] = mapped_column(String(64), nullable=True)

    model: Mapped[Model] = relationship(back_populates="versions", lazy="raise")


class VersionWithdrawal(Base):
    """A version withdrawn because a newer one (``successor_number``) answers erasure
    requests whose data it still holds: from ``effective_at`` (decided + the grace period)
    its weights and report answer 410 Gone. A row of its own: versions stay immutable."""

    __tablename__ = "version_withdrawals"
    __table_args__ = (Index("ix_version_withdrawals_model", "model_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    version_id: Mapped[int] = mapped_column(
        ForeignKey("model_versions.id", ondelete="CASCADE"), unique=True
    )
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"))
    successor_number: Mapped[int] = mapped_column(Integer)
    reason: Mapped[str] = mapped_column(String(32))  # erasure | compaction
    #: The erasure requests whose answer superseded it (ids; shown to their tenant only).
    request_ids: Mapped[list[str]] = mapped_column(JSON, default=list)
    decided_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    effective_at: Mapped[datetime] = mapped_column(UTCDateTime)

    def in_force(self, now: datetime) -> bool:
        return self.effective_at <= now
