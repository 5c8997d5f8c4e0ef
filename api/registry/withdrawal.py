"""Withdrawing superseded versions: nothing of an erased subject stays downloadable.

When a version answers an erasure request by changing the weights (an approximate or exact
erasure, or a compaction), every earlier version of the model still holds the subject's
influence: each came from a training on the subject's samples, and nothing before the new
version removed them. Every earlier version not withdrawn yet is therefore withdrawn, with
the new one as its successor, effective after ``LETHE_WITHDRAW_GRACE_HOURS`` (serving
fleets roll over meanwhile; 0 allowed). Version 0 is no exception. From then on its
weights and report answer ``410 Gone`` with ``Link: </models/{name}/versions/{n}>;
rel="successor-version"``, ``latest`` never resolves to it, and listings show when and
for which requests it went.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from api.audit.service import append as audit
from api.config import get_settings
from api.database.core import utcnow
from api.registry.models import Model, ModelVersion, VersionWithdrawal
from api.webhooks import service as webhooks


def default_grace() -> timedelta:
    return timedelta(hours=get_settings().withdraw_grace_hours)


def schedule(
    *,
    db: Session,
    model: Model,
    successor: ModelVersion,
    request_ids: list[str],
    reason: str,
    actor: str | None,
    grace: timedelta | None = None,
) -> list[int]:
    """Withdraw every earlier version of ``model`` not withdrawn yet, effective after
    ``grace`` (default ``LETHE_WITHDRAW_GRACE_HOURS``), in the caller's transaction;
    audited ``version.withdrawal_scheduled``. Returns the version numbers."""
    withdrawn = select(VersionWithdrawal.version_id).where(VersionWithdrawal.model_id == model.id)
    earlier = list(
        db.scalars(
            select(ModelVersion)
            .where(
                ModelVersion.model_id == model.id,
                ModelVersion.number < successor.number,
                ModelVersion.id.not_in(withdrawn),
            )
            .order_by(ModelVersion.number)
        )
    )
    if not earlier:
        return []
    now = utcnow()
    effective = now + (default_grace() if grace is None else grace)
    for version in earlier:
        db.add(
            VersionWithdrawal(
                version_id=version.id,
                model_id=model.id,
                successor_number=successor.number,
                reason=reason,
                request_ids=list(request_ids),
                decided_at=now,
                effective_at=effective,
            )
        )
    numbers = [v.number for v in earlier]
    audit(
        db,
        "version.withdrawal_scheduled",
        request_id=request_ids[0] if len(request_ids) == 1 else None,
        model_name=model.name,
        tenant=model.tenant,
        actor=actor,
        payload={
            "versions": numbers,
            "successor": successor.number,
            "reason": reason,
            "effective_at": effective.isoformat(),
            "requests": len(request_ids),
        },
    )
    for number in numbers:  # webhooks: to the model's tenant
        webhooks.emit(db, tenant=model.tenant, kind="version.withdrawn", payload={
            "model": model.name, "version": number, "successor": successor.number,
            "reason": reason, "effective_at": effective.isoformat()})
    db.flush()
    return numbers


def of_versions(*, db: Session, version_ids: list[int]) -> dict[int, VersionWithdrawal]:
    """The withdrawal (scheduled or in force) of each of these versions that has one."""
    if not version_ids:
        return {}
    return {
        w.version_id: w
        for w in db.scalars(
            select(VersionWithdrawal).where(VersionWithdrawal.version_id.in_(version_ids))
        )
    }


def in_force(*, db: Session, version: ModelVersion, now: datetime | None = None) -> VersionWithdrawal | None:
    """The version's withdrawal if it is in force (past its grace period), else None."""
    row = of_versions(db=db, version_ids=[version.id]).get(version.id)
    return row if row is not None and row.in_force(now or utcnow()) else None
