"""Bodies of the webhook routes; the outbound URL is validated here."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator

from api.webhooks.models import URL_LIMIT


class EventKind(StrEnum):
    VERSION_PUBLISHED = "version.published"
    VERSION_WITHDRAWN = "version.withdrawn"
    REQUEST_COMPLETED = "request.completed"
    REQUEST_EXACT = "request.exact"


ALL_EVENTS: tuple[str, ...] = tuple(e.value for e in EventKind)


def check_url(url: str) -> str:
    """``url`` if Lethe may POST to it, else :class:`ValueError` naming the problem: http or
    https only, a host, no credentials, no fragment, no whitespace or control characters,
    at most :data:`URL_LIMIT` characters. Which hosts are reachable is the operator's egress
    policy (private addresses are not refused here)."""
    if len(url) > URL_LIMIT:
        raise ValueError(f"the URL is longer than {URL_LIMIT} characters")
    if any(c.isspace() or ord(c) < 32 or ord(c) == 127 for c in url):
        raise ValueError("the URL contains whitespace or control characters")
    try:
        parts = urlsplit(url)
        port = parts.port  # a bad port raises here
    except ValueError as exc:
        raise ValueError(f"the URL does not parse ({exc})") from None
    if parts.scheme.lower() not in ("http", "https"):
        raise ValueError(
            f"the URL's scheme must be http or https, not {parts.scheme or 'none'!r}"
        )
    if not parts.hostname:
        raise ValueError("the URL has no host")
    if parts.username is not None or parts.password is not None or "@" in parts.netloc:
        raise ValueError("the URL must not carry credentials (user:password@); verify the signature instead")
    if parts.fragment:
        raise ValueError("the URL must not have a #fragment")
    if port == 0:
        raise ValueError("the URL's port must be between 1 and 65535")
    return url


class WebhookCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: str = Field(
        min_length=1,
        max_length=URL_LIMIT,
        description="http(s) endpoint that receives the signed JSON POSTs",
        examples=["https://serving.example.com/lethe-events"],
    )
    events: list[EventKind] | None = Field(
        default=None,
        max_length=len(ALL_EVENTS),
        description="event kinds to receive; every kind when omitted",
    )

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        return check_url(value)

    @field_validator("events")
    @classmethod
    def _events(cls, value: list[EventKind] | None) -> list[EventKind] | None:
        if value is not None and not value:
            raise ValueError("give at least one event kind, or leave events out for all")
        return value


class WebhookOut(BaseModel):
    id: int
    url: str
    events: list[str]
    active: bool
    created_at: datetime


class WebhookCreated(WebhookOut):
    secret: str = Field(
        description="signs every delivery (Lethe-Signature); shown only now: keep it",
    )


class DeliveryOut(BaseModel):
    id: int
    webhook_id: int
    event_id: str = Field(description="the same on every attempt: de-duplicate on it")
    event: str
    payload: dict[str, Any]
    status: str = Field(description="queued, running, completed, failed or cancelled")
    attempts: int
    next_attempt_at: datetime | None
    last_status_code: int | None
    error: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


class DeliveryPage(BaseModel):
    items: list[DeliveryOut]
    total: int
    limit: int
    offset: int
