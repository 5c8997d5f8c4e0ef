"""Webhook endpoints of a tenant and the deliveries owed to them (a job kind of the lease)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Boolean, ForeignKey, Index, Integer, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from api.database.core import Base, UTCDateTime, utcnow
from api.jobs.policy import ERROR_LIMIT
from api.jobs.states import JobState

#: Longest endpoint URL accepted.
URL_LIMIT = 2048


class Webhook(Base):
    """An endpoint an admin registered for its tenant.

    ``secret`` signs every delivery (HMAC-SHA256). It is shown once, in the answer to
    ``POST /webhooks``, and stored as is: the service must sign with it, so a hash would not
    do (like the S3 credentials, it is protected by access to the database). Deleting the
    webhook clears it. ``events``: the event kinds it receives (every kind by default).
    """

    __tablename__ = "webhooks"
    __table_args__ = (Index("ix_webhooks_tenant", "tenant"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    tenant: Mapped[str] = mapped_column(String(64))
    url: Mapped[str] = mapped_column(String(URL_LIMIT))
    secret: Mapped[str] = mapped_column(String(128))
    events: Mapped[list[str]] = mapped_column(JSON, default=list)
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    deleted_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class WebhookDelivery(Base):
    """One event owed to one webhook: a job row of the lease (:mod:`api.jobs.lease`).

    ``queued`` (due at ``next_attempt_at``) -> ``running`` -> ``completed`` (a 2xx answer)
    | ``queued`` again with a later ``next_attempt_at`` (anything else) | ``failed`` after
    ``LETHE_WEBHOOK_MAX_ATTEMPTS``; ``cancelled`` when its webhook is deleted first.
    ``event_id`` is the same on every attempt: the receiver's de-duplication key.
    """

    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        UniqueConstraint("webhook_id", "event_id", name="uq_webhook_deliveries_webhook_event"),
        Index("ix_webhook_deliveries_due", "status", "next_attempt_at"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    webhook_id: Mapped[int] = mapped_column(ForeignKey("webhooks.id", ondelete="CASCADE"))
    event_id: Mapped[str] = mapped_column(String(36))
    event: Mapped[str] = mapped_column(String(32))
    payload: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    status: Mapped[str] = mapped_column(String(16), default=JobState.QUEUED)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_status_code: Mapped[int | None] = mapped_column(Integer, nullable=True)
    error: Mapped[str | None] = mapped_column(String(ERROR_LIMIT), nullable=True)
    heartbeat_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
