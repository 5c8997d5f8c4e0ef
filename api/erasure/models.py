"""Erasure requests and their per-model jobs."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, ForeignKey, Index, Integer, String
from sqlalchemy.orm import Mapped, mapped_column, relationship

from api.database.core import Base, UTCDateTime, utcnow
from api.observability.context import current_request_id


class ErasureRequest(Base):
    __tablename__ = "erasure_requests"
    __table_args__ = (
        Index("ix_erasure_requests_tenant_idem", "tenant", "idempotency_key", unique=True),
        Index("ix_erasure_requests_status", "status"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    tenant: Mapped[str] = mapped_column(String(64))
    api_key_id: Mapped[int | None] = mapped_column(ForeignKey("api_keys.id"), nullable=True)
    subject_id: Mapped[str | None] = mapped_column(String(256), nullable=True, index=True)
    sample_ids: Mapped[list[str]] = mapped_column(JSON, default=list)
    target_models: Mapped[list[str] | None] = mapped_column(JSON, nullable=True)
    method: Mapped[str | None] = mapped_column(String(32), nullable=True)
    status: Mapped[str] = mapped_column(String(24))
    idempotency_key: Mapped[str | None] = mapped_column(String(256), nullable=True)
    body_sha256: Mapped[str] = mapped_column(String(64))
    error: Mapped[str | None] = mapped_column(String(2000), nullable=True)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    due_at: Mapped[datetime] = mapped_column(UTCDateTime)
    completed_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)
    #: ``X-Request-ID`` of the HTTP request that filed it (taken from the log context when
    #: the row is inserted), so the worker's log lines for it carry the same id.
    http_request_id: Mapped[str | None] = mapped_column(
        String(128), nullable=True, default=current_request_id
    )

    jobs: Mapped[list[RequestJob]] = relationship(back_populates="request", lazy="raise", order_by="RequestJob.id")


class RequestJob(Base):
    """The work of one request on one model; links the request to the version answering it."""

    __tablename__ = "request_jobs"
    __table_args__ = (
        Index("ix_request_jobs_status", "status"),
        Index("ix_request_jobs_model_exact", "model_id", "exact_at"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    request_id: Mapped[str] = mapped_column(ForeignKey("erasure_requests.id", ondelete="CASCADE"))
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id"))
    method: Mapped[str] = mapped_column(String(32))
    #: The method's options, validated against its model when the request was filed
    #: (defaults filled in); None: the method's defaults.
    method_options: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    status: Mapped[str] = mapped_column(String(24), default="queued")
    progress: Mapped[float] = mapped_column(default=0.0)
    step: Mapped[str | None] = mapped_column(String(128), nullable=True)
    sample_ids: Mapped[list[str]] = mapped_column(JSON, default=list)  # training samples to forget
    version_id: Mapped[int | None] = mapped_column(ForeignKey("model_versions.id"), nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    device: Mapped[str | None] = mapped_column(String(32), nullable=True)
    error: Mapped[str | None] = mapped_column(String(2000), nullable=True)
    details: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    #: Running: the holding worker's last sign of life (stale: the job was abandoned).
    #: Queued: when a worker last handed the job back (a retry is scheduled).
    heartbeat_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    #: The exact tier: the version that answers the job exactly (an exact method, a
    #: compaction, a run that never trained on the samples) and when; NULL while the job
    #: is answered approximately only (``version_id``).
    exact_version_id: Mapped[int | None] = mapped_column(ForeignKey("model_versions.id"), nullable=True)
    exact_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    #: A job that applies the erasure of job ``reapplies_job_id`` again, on the new lineage
    #: of a compaction that still trained on its samples (they were erased while it ran).
    reapplies_job_id: Mapped[int | None] = mapped_column(ForeignKey("request_jobs.id"), nullable=True)

    request: Mapped[ErasureRequest] = relationship(back_populates="jobs", lazy="raise")
