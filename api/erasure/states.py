"""The erasure request state machine (and the states of a request's per-model jobs).

A request's ``status`` moves only along these edges; every move appends an audit event
``request.<new status>`` naming the old and new state, the actor and (when given) a
reason. As a diagram (Mermaid, renders on GitHub):

```mermaid
stateDiagram-v2
    [*] --> received
    received --> queued: filed (approval off)
    received --> awaiting_approval: filed (LETHE_REQUIRE_APPROVAL=true)
    awaiting_approval --> queued: approve
    awaiting_approval --> denied: deny
    awaiting_approval --> cancelled: cancel
    queued --> running: a worker claims a job
    queued --> cancelled: cancel
    running --> completed: last job done
    running --> failed: a job failed
    running --> queued: worker restarted
    failed --> queued: retry
    failed --> cancelled: cancel
    completed --> [*]
    denied --> [*]
    cancelled --> [*]
```

| from              | to                | by                                                         |
| ----------------- | ----------------- | ---------------------------------------------------------- |
| received          | queued            | `POST /erasure-requests` (approval off, the default)       |
| received          | awaiting_approval | `POST /erasure-requests` with `LETHE_REQUIRE_APPROVAL=true` |
| awaiting_approval | queued            | admin `approve`                                            |
| awaiting_approval | denied            | admin `deny` (final)                                       |
| awaiting_approval | cancelled         | admin `cancel` (final)                                     |
| queued            | running           | a worker claims the request's first job                    |
| queued            | cancelled         | admin `cancel` (final)                                     |
| running           | completed         | the worker finishes the last job (final)                   |
| running           | failed            | any job fails (the error is kept on job and request)       |
| running           | queued            | a restarted embedded worker re-queues the jobs it lost     |
| failed            | queued            | admin `retry`: the failed jobs are queued again            |
| failed            | cancelled         | admin `cancel`: give up on a failed request (final)        |

``received`` is never seen from outside: a request is stored, audited as received and moved
on in the same transaction. ``completed``, ``denied`` and ``cancelled`` are final. A request
is *overdue* when its ``due_at`` (received + LETHE_ERASURE_DUE_DAYS, one month by default,
GDPR Art. 12(3)) has passed while it is not final or, completed, not exact on every model
(the exact tier: :mod:`api.compaction`). A job that applies an erasure again on a
compaction's new lineage (``reapplies_job_id``) runs while its request stays ``completed``.

Jobs (one per target model) have their own small cycle: ``pending`` (held while the request
awaits approval) -> ``queued`` -> ``running`` -> ``completed`` | ``failed``; ``failed`` ->
``queued`` on retry; ``pending``/``queued`` -> ``cancelled`` when the request is denied or
cancelled. A request completes when all its jobs have.

An illegal move raises :class:`api.errors.ConflictError` (HTTP 409) naming both states.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from sqlalchemy.orm import Session

from api.audit.service import append as audit_append
from api.database.core import utcnow
from api.erasure.models import ErasureRequest
from api.errors import ConflictError
from api.jobs.states import JobState


class RequestStatus(StrEnum):
    RECEIVED = "received"
    AWAITING_APPROVAL = "awaiting_approval"
    QUEUED = "queued"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    DENIED = "denied"
    CANCELLED = "cancelled"


#: A request's per-model jobs move through the states every job kind shares.
JobStatus = JobState


S = RequestStatus
TRANSITIONS: dict[RequestStatus, frozenset[RequestStatus]] = {
    S.RECEIVED: frozenset({S.QUEUED, S.AWAITING_APPROVAL}),
    S.AWAITING_APPROVAL: frozenset({S.QUEUED, S.DENIED, S.CANCELLED}),
    S.QUEUED: frozenset({S.RUNNING, S.CANCELLED}),
    S.RUNNING: frozenset({S.COMPLETED, S.FAILED, S.QUEUED}),
    S.FAILED: frozenset({S.QUEUED, S.CANCELLED}),
    S.COMPLETED: frozenset(),
    S.DENIED: frozenset(),
    S.CANCELLED: frozenset(),
}

#: States a request never leaves.
FINAL: frozenset[RequestStatus] = frozenset(s for s, nxt in TRANSITIONS.items() if not nxt)
#: States in which workers may pick up the request's queued jobs.
WORKABLE: frozenset[RequestStatus] = frozenset({S.QUEUED, S.RUNNING})


def check(
    request_id: str, current: str, target: RequestStatus, *, action: str | None = None
) -> None:
    """Raise :class:`ConflictError` unless ``current -> target`` is an edge of the machine."""
    now = RequestStatus(current)
    if target in TRANSITIONS[now]:
        return
    allowed = ", ".join(sorted(TRANSITIONS[now])) or "none, it is final"
    what = f"cannot {action} request {request_id}: " if action else f"request {request_id}: "
    raise ConflictError(
        f"{what}it is {now.value!r} and cannot move from {now.value!r} to {target.value!r} "
        f"(allowed from {now.value!r}: {allowed})"
    )


def received(
    db: Session, request: ErasureRequest, *, actor: str | None, payload: dict[str, Any]
) -> None:
    """The first event of every request (its state before the first transition)."""
    request.status = S.RECEIVED
    audit_append(db, "request.received", request_id=request.id, tenant=request.tenant, actor=actor, payload=payload)


def transition(
    db: Session,
    request: ErasureRequest,
    target: RequestStatus,
    *,
    actor: str | None,
    action: str | None = None,
    reason: str | None = None,
    payload: dict[str, Any] | None = None,
) -> None:
    """Move ``request`` to ``target`` (in the caller's transaction) and audit the move."""
    current = request.status
    check(request.id, current, target, action=action)
    request.status = target
    if target == S.COMPLETED:
        request.completed_at = utcnow()
    body: dict[str, Any] = {"from": current, "to": target.value}
    if reason:
        body["reason"] = reason
    body.update(payload or {})
    audit_append(
        db, f"request.{target.value}", request_id=request.id, tenant=request.tenant, actor=actor, payload=body
    )
