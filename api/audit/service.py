"""The tamper-evident audit chain.

Each event stores the hash of its predecessor and its own hash over (seq, kind, ids,
actor, payload, time, prev_hash) in canonical JSON. Editing an event breaks its own hash;
deleting or inserting one breaks the sequence or the next event's ``prev_hash``.
Appends are serialised (a transaction-scoped advisory lock on PostgreSQL, SQLite's single
writer elsewhere, and a unique ``seq`` as the backstop), so the chain never forks.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from sqlalchemy import select, text
from sqlalchemy.orm import Session

from api.audit.models import AuditEvent
from api.database.core import utcnow

GENESIS = "0" * 64
_LOCK_ID = 0x4C45544845  # "LETHE"


def _digest(event: AuditEvent) -> str:
    body = {
        "seq": event.seq,
        "kind": event.kind,
        "request_id": event.request_id,
        "model_name": event.model_name,
        "actor": event.actor,
        "payload": event.payload,
        "created_at": event.created_at.isoformat(),
        "prev_hash": event.prev_hash,
    }
    if event.tenant is not None:  # events from before tenants were recorded hash as they did
        body["tenant"] = event.tenant
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def append(
    db: Session,
    kind: str,
    *,
    request_id: str | None = None,
    model_name: str | None = None,
    actor: str | None = None,
    payload: dict[str, Any] | None = None,
    tenant: str | None = None,
) -> AuditEvent:
    """Add an event to the chain in the caller's transaction (committed with its change).

    ``tenant``: whose resource the event is about (a request's, a model's, a dataset's,
    a webhook's); None for the service's own events."""
    if db.get_bind().dialect.name == "postgresql":
        db.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _LOCK_ID})
    last = db.scalar(select(AuditEvent).order_by(AuditEvent.seq.desc()).limit(1))
    # Round-trip the payload through JSON so the hash covers exactly what is stored.
    stored = json.loads(json.dumps(payload or {}, default=str))
    event = AuditEvent(
        seq=(last.seq + 1) if last else 1,
        kind=kind,
        request_id=request_id,
        model_name=model_name,
        tenant=tenant,
        actor=actor,
        payload=stored,
        created_at=utcnow(),
        prev_hash=last.hash if last else GENESIS,
    )
    event.hash = _digest(event)
    db.add(event)
    db.flush()
    return event


def verify(db: Session) -> dict[str, Any]:
    """Walk the chain; report the first broken link (``None`` when it holds)."""
    prev_hash, expected_seq, checked = GENESIS, 1, 0
    for event in db.scalars(select(AuditEvent).order_by(AuditEvent.seq)):
        problem = None
        if event.seq != expected_seq:
            problem = f"event {expected_seq} is missing (next is {event.seq})"
        elif event.prev_hash != prev_hash:
            problem = "prev_hash does not match the previous event's hash"
        elif _digest(event) != event.hash:
            problem = "the event's content does not match its hash (edited)"
        if problem:
            return {"ok": False, "checked": checked, "first_broken": {"seq": event.seq, "id": event.id, "reason": problem}}
        prev_hash, expected_seq, checked = event.hash, event.seq + 1, checked + 1
    return {"ok": True, "checked": checked, "first_broken": None, "head": prev_hash}


def events_for_request(db: Session, request_id: str) -> list[AuditEvent]:
    return list(db.scalars(select(AuditEvent).where(AuditEvent.request_id == request_id).order_by(AuditEvent.seq)))
