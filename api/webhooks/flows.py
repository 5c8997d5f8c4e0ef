"""Delivering webhook events: a delivery is a job kind of the job lease.

A :class:`~api.webhooks.models.WebhookDelivery` row is claimed like any job
(:mod:`api.jobs.lease`: ``FOR UPDATE SKIP LOCKED``, ``attempts`` + 1, an attempt token,
heartbeat while the POST runs, stale claims of dead workers requeued), but only once it is
due (``next_attempt_at`` <= now) and while its webhook is active. One attempt:

- POST the event (``{id, type, created_at, data}``, canonical JSON) to the webhook's URL,
  signed (:func:`sign`: ``Lethe-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of
  "<t>.<body>" with the webhook's secret>``), with ``Lethe-Event`` and ``Lethe-Event-Id``,
  redirects not followed, ``LETHE_WEBHOOK_TIMEOUT_SECONDS``;
- a 2xx answer: ``completed``;
- anything else (another status, a refused connection, a timeout): ``queued`` again with
  ``next_attempt_at`` after :func:`backoff` (10 s, 30 s, 90 s, ... at most an hour), or
  ``failed`` after ``LETHE_WEBHOOK_MAX_ATTEMPTS``; the status code and error stay on the
  row for the admin (``GET /webhooks/{id}/deliveries``).

The outcome is recorded only while the attempt's token still holds the row, so a worker
declared dead cannot overwrite a newer attempt. Delivery is at least once: a worker that
dies after the POST and before recording it sends the same event (same ``event_id``) again.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Final

import httpx
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from api.config import get_settings
from api.database.core import utcnow
from api.jobs.lease import Lease, LeaseToken
from api.jobs.policy import FAILED, bounded, execute
from api.jobs.states import JobState
from api.webhooks.models import Webhook, WebhookDelivery

log = logging.getLogger("lethe.webhooks")

SessionFactory = Callable[[], Session]

USER_AGENT: Final = "Lethe-Webhooks/1"
#: First retry delay, growth factor and cap of :func:`backoff`.
BACKOFF_FIRST: Final = 10.0
BACKOFF_FACTOR: Final = 3.0
BACKOFF_CAP: Final = 3600.0


def backoff(attempts: int) -> timedelta:
    """The wait after the ``attempts``-th failed attempt: 10 s, 30 s, 90 s, ... capped at 1 h."""
    seconds = BACKOFF_FIRST * BACKOFF_FACTOR ** max(0, attempts - 1)
    return timedelta(seconds=min(BACKOFF_CAP, seconds))


def _workable(query: Any) -> Any:
    """Due deliveries of active webhooks, the longest-waiting first."""
    active = select(Webhook.id).where(Webhook.active.is_(True))
    return query.where(
        WebhookDelivery.next_attempt_at <= utcnow(), WebhookDelivery.webhook_id.in_(active)
    ).order_by(WebhookDelivery.next_attempt_at, WebhookDelivery.id)


LEASE: Lease[WebhookDelivery] = Lease(WebhookDelivery, kind="webhook delivery", workable=_workable)


# ---------------------------------------------------------------------------------------
# The request a receiver gets
# ---------------------------------------------------------------------------------------


def body_of(delivery: WebhookDelivery) -> bytes:
    """The JSON body of every attempt of ``delivery`` (the same bytes each time)."""
    envelope = {
        "id": delivery.event_id,
        "type": delivery.event,
        "created_at": delivery.created_at.isoformat(),
        "data": delivery.payload,
    }
    return json.dumps(envelope, sort_keys=True, separators=(",", ":")).encode()


def sign(secret: str, body: bytes, timestamp: int) -> str:
    """The ``Lethe-Signature`` header value of ``body`` sent at ``timestamp``."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"t={timestamp},v1={mac.hexdigest()}"


def headers_of(claim: DeliveryClaim, body: bytes, timestamp: int) -> dict[str, str]:
    return {
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        "Lethe-Event": claim.event,
        "Lethe-Event-Id": claim.event_id,
        "Lethe-Delivery-Attempt": str(claim.token.attempt),
        "Lethe-Signature": sign(claim.secret, body, timestamp),
    }


# ---------------------------------------------------------------------------------------
# Claim, deliver, record
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DeliveryClaim:
    """What a worker took: the attempt token and what it needs to POST without the database."""

    token: LeaseToken
    webhook_id: int
    url: str
    secret: str
    event: str
    event_id: str
    body: bytes

    @property
    def delivery_id(self) -> int:
        return self.token.job_id


def claim(*, session_factory: SessionFactory, delivery_id: int | None = None) -> DeliveryClaim | None:
    """Claim delivery ``delivery_id`` (or the first due one): None when it is not due yet,
    its webhook is gone, or it is held, finished or missing."""

    def take(db: Session, _parent: Any, row: WebhookDelivery, resumed: bool) -> DeliveryClaim | None:
        webhook = db.get(Webhook, row.webhook_id)
        if webhook is None or not webhook.active:
            return None
        if not resumed and row.next_attempt_at > utcnow():
            return None  # a retry not due yet (an early or duplicate message)
        return DeliveryClaim(
            token=LeaseToken(job_id=row.id, attempt=row.attempts),
            webhook_id=webhook.id,
            url=webhook.url,
            secret=webhook.secret,
            event=row.event,
            event_id=row.event_id,
            body=body_of(row),
        )

    return LEASE.claim(session_factory=session_factory, job_id=delivery_id, on_claim=take)


@dataclass(frozen=True)
class Outcome:
    ok: bool
    status_code: int | None
    error: str | None


def post(claim: DeliveryClaim, *, timeout: float | None = None) -> Outcome:
    """One signed POST; its outcome (a transport error is an outcome, not an exception).
    The receiver's body is not read."""
    timeout = get_settings().webhook_timeout_seconds if timeout is None else timeout
    headers = headers_of(claim, claim.body, int(time.time()))
    try:
        with httpx.Client(timeout=timeout, follow_redirects=False, trust_env=False) as client:
            with client.stream("POST", claim.url, content=claim.body, headers=headers) as resp:
                code = resp.status_code
    except (httpx.HTTPError, httpx.InvalidURL, OSError) as exc:
        return Outcome(False, None, bounded(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__))
    if 200 <= code < 300:
        return Outcome(True, code, None)
    return Outcome(False, code, f"the endpoint answered HTTP {code}")


def record(*, session_factory: SessionFactory, claim: DeliveryClaim, outcome: Outcome) -> str | None:
    """Record ``outcome`` while the claim's token holds the row: ``completed``, ``queued``
    (a retry due after :func:`backoff`) or ``failed``; None when the claim was lost."""
    with session_factory() as db:
        held = LEASE.lock_held(db, claim.token)
        if held is None:
            log.warning(
                "webhook delivery %s (attempt %s) is no longer ours; its outcome is dropped",
                claim.delivery_id, claim.token.attempt,
            )
            return None
        _parent, row = held
        now = utcnow()
        row.last_status_code = outcome.status_code
        if outcome.ok:
            row.status, row.error, row.finished_at = JobState.COMPLETED, None, now
        elif row.attempts >= get_settings().webhook_max_attempts:
            row.status, row.finished_at = JobState.FAILED, now
            row.error = bounded(f"gave up after {row.attempts} attempts: {outcome.error}")
        else:
            row.status, row.error = JobState.QUEUED, outcome.error
            row.next_attempt_at = now + backoff(row.attempts)
            row.heartbeat_at = None  # due again at next_attempt_at, for the dispatcher too
        state = row.status
        db.commit()
    if not outcome.ok:
        log.warning(
            "webhook delivery %s (%s, event %s) attempt %s to webhook %s: %s; now %s",
            claim.delivery_id, claim.event, claim.event_id, claim.token.attempt,
            claim.webhook_id, outcome.error, state,
        )
    return state


def deliver(*, session_factory: SessionFactory, claim: DeliveryClaim, retry_transient: bool = False) -> str:
    """POST the claimed delivery and record its outcome under the lease policy (heartbeat;
    a database fault fails or, with ``retry_transient``, releases the attempt); the state
    it was left in, or ``skipped`` when the claim was lost."""
    outcome = execute(
        LEASE,
        session_factory=session_factory,
        token=claim.token,
        work=lambda: record(session_factory=session_factory, claim=claim, outcome=post(claim)),
        what=f"webhook delivery {claim.delivery_id}",
        retry_transient=retry_transient,
    )
    if outcome is FAILED:
        return JobState.FAILED.value
    return str(outcome) if outcome is not None else "skipped"


def process_delivery(
    *, session_factory: SessionFactory, delivery_id: int, retry_transient: bool = False
) -> str:
    """The Celery task's work: claim ``delivery_id`` and deliver it; ``skipped`` when it is
    not ours to do (not due, done, held by another worker)."""
    taken = claim(session_factory=session_factory, delivery_id=delivery_id)
    if taken is None:
        return "skipped"
    return deliver(session_factory=session_factory, claim=taken, retry_transient=retry_transient)


def deliver_due(*, session_factory: SessionFactory, limit: int | None = None) -> int:
    """Deliver due deliveries in this process, one at a time (the embedded worker; tests);
    how many attempts were made. Abandoned ones (stale heartbeat) are requeued first."""
    requeue_abandoned(session_factory=session_factory)
    done = 0
    while limit is None or done < limit:
        taken = claim(session_factory=session_factory)
        if taken is None:
            break
        deliver(session_factory=session_factory, claim=taken)
        done += 1
    return done


# ---------------------------------------------------------------------------------------
# The dispatcher's part
# ---------------------------------------------------------------------------------------


def requeue_abandoned(*, session_factory: SessionFactory) -> list[int]:
    """Deliveries whose worker died mid-POST back to ``queued`` (due at once)."""
    return LEASE.requeue_abandoned(
        session_factory=session_factory,
        on_requeue=lambda db, parent, row: setattr(row, "next_attempt_at", utcnow()),
    )


def requeue_interrupted(*, session_factory: SessionFactory) -> int:
    """Every ``running`` delivery back to ``queued`` (start of an embedded deployment)."""
    return LEASE.requeue_interrupted(session_factory=session_factory)


def due_ids(*, session_factory: SessionFactory, now: datetime | None = None) -> list[int]:
    """Due deliveries with no message on its way (none sent, or one sent longer than the
    stale period ago); each is marked sent now (its ``heartbeat_at``), so the next rounds
    leave it to that message for a stale period."""
    ids = LEASE.pending_ids(session_factory=session_factory)
    if ids:
        with session_factory() as db:
            db.execute(
                update(WebhookDelivery)
                .where(WebhookDelivery.id.in_(ids), WebhookDelivery.status == JobState.QUEUED)
                .values(heartbeat_at=now or utcnow())
                .execution_options(synchronize_session=False)
            )
            db.commit()
    return ids
