"""What the purge deleted: one row per blob."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import JSON, BigInteger, ForeignKey, Index, Integer, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from api.database.core import Base, UTCDateTime, utcnow


class PurgedBlob(Base):
    """A blob deleted because it held erased data (``reason``: ``subtracted-step``,
    ``withdrawn-version``, ``replaced-lineage``, ``superseded-checkpoint``); its key and
    sha256 stay as evidence. An upload rewritten without erased samples belongs to a dataset,
    not a model: its old and new sha256 are in the dataset row and the ``upload.rewritten``
    audit event (:mod:`api.purge.uploads`)."""

    __tablename__ = "purged_blobs"
    __table_args__ = (
        UniqueConstraint("store_url", "key", name="uq_purged_blobs_store_key"),
        Index("ix_purged_blobs_model", "model_id"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    store_url: Mapped[str] = mapped_column(String(1024))
    key: Mapped[str] = mapped_column(String(1024))
    sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    size: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    reason: Mapped[str] = mapped_column(String(32))
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"))
    run_id: Mapped[str] = mapped_column(String(128))
    version: Mapped[int | None] = mapped_column(Integer, nullable=True)
    #: The erasure requests whose data it held: for a withdrawn version those its successor
    #: answered, for a step's update those whose jobs subtracted it, for a replaced lineage
    #: those its withdrawn versions answered.
    request_ids: Mapped[list[str]] = mapped_column(JSON, default=list)
    deleted_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
