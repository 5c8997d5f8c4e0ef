"""Datasets and their samples, the ground truth for lineage and tombstones."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, ForeignKey, Index, Integer, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship

from api.database.core import Base, UTCDateTime, utcnow


class Dataset(Base):
    """A dataset of one tenant (name unique within it; another tenant gets a 404)."""

    __tablename__ = "datasets"
    __table_args__ = (UniqueConstraint("tenant", "name", name="uq_datasets_tenant_name"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    tenant: Mapped[str] = mapped_column(String(64), default="default", server_default="default")
    name: Mapped[str] = mapped_column(String(128))
    source: Mapped[str] = mapped_column(String(1024))  # digits | fashion-mnist | a server path
    split_seed: Mapped[int] = mapped_column(Integer, default=0)
    test_fraction: Mapped[float] = mapped_column(default=0.2)
    subject_size: Mapped[int | None] = mapped_column(Integer, nullable=True)
    num_classes: Mapped[int] = mapped_column(Integer)
    num_samples: Mapped[int] = mapped_column(Integer)
    info: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    samples: Mapped[list[Sample]] = relationship(back_populates="dataset", lazy="raise")


class Sample(Base):
    """One training sample; ``erased_at`` is the tombstone that keeps it out of any later training."""

    __tablename__ = "samples"
    __table_args__ = (
        UniqueConstraint("dataset_id", "sample_id", name="uq_samples_dataset_sample"),
        Index("ix_samples_dataset_subject", "dataset_id", "subject_id"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    dataset_id: Mapped[int] = mapped_column(ForeignKey("datasets.id", ondelete="CASCADE"))
    sample_id: Mapped[str] = mapped_column(String(256))
    position: Mapped[int] = mapped_column(Integer)
    label: Mapped[int] = mapped_column(Integer)
    subject_id: Mapped[str | None] = mapped_column(String(256), nullable=True)
    raw_blob_key: Mapped[str | None] = mapped_column(String(1024), nullable=True)
    erased_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    erased_by_request: Mapped[str | None] = mapped_column(String(36), nullable=True)

    dataset: Mapped[Dataset] = relationship(back_populates="samples", lazy="raise")
