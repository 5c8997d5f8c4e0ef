"""The job lease: how a worker takes a job row, proves it still holds it, and gives it back.

The database is the queue of record; a broker message only wakes a worker. Any table whose
rows carry the lease columns (:class:`LeasedRow`: ``status``, ``attempts``,
``heartbeat_at``, ``started_at``, ``finished_at``, ``error``) is a job queue with one
:class:`Lease` over it:

- **claim** (:meth:`Lease.claim`): lock the row (``FOR UPDATE SKIP LOCKED`` on PostgreSQL,
  so two workers never take the same job), take it if ``queued`` or abandoned (``running``
  with a stale heartbeat), ``attempts`` + 1, commit ``running`` at once. The pair (row id,
  attempt) is the **attempt token** (:class:`LeaseToken`): every later write of the holder
  (heartbeat, progress, result, release, failure) is made only while the row is still
  ``running`` in that attempt, so a worker that lost its job (it was declared dead and the
  job was claimed again) can never overwrite the newer attempt's outcome.
- **heartbeat** (:meth:`Lease.beat`, :class:`api.jobs.heartbeat.Heartbeat`): refreshed
  from a daemon thread while the work runs; older than ``LETHE_JOB_STALE_SECONDS`` means
  abandoned.
- **release** (:meth:`Lease.release`): a transient fault hands the job back (``queued``)
  for a scheduled retry; its ``heartbeat_at`` is set so the dispatcher leaves it to that
  retry until it is stale.
- **fail** (:meth:`Lease.fail`): ``failed`` with a readable, bounded error.
- **requeue** abandoned work (:meth:`Lease.requeue_abandoned`, the dispatcher, safe while
  other workers run) and interrupted work (:meth:`Lease.requeue_interrupted`, the start of
  a deployment whose worker is the only one).
- **pending ids** (:meth:`Lease.pending_ids`): queued rows a dispatcher should (re)enqueue.

A job kind adapts the lease with a few arguments rather than code of its own: ``workable``
(which queued rows may run now, and in what order: an erasure job only while its request
is workable), ``lock_parent`` (a row to lock before the job's, in the order every writer of
both uses), ``changed_column`` (rows changed since then have their message on its way).
What a kind does beyond the lease columns on claim, release, failure or requeue (its own
columns, audit events, its parent's state) is a hook called inside the same transaction.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Generic, Protocol, TypeVar

from sqlalchemy import ColumnElement, Select, func, or_, select, update
from sqlalchemy.orm import InstrumentedAttribute, Session

from api.database.core import utcnow
from api.jobs.heartbeat import stale_before
from api.jobs.states import JobState

log = logging.getLogger("lethe.jobs")

SessionFactory = Callable[[], Session]


class LeasedRow(Protocol):
    """The columns a job table needs for the lease (an ORM class with these attributes)."""

    id: int
    status: str
    attempts: int
    error: str | None
    started_at: datetime | None
    finished_at: datetime | None
    #: Running: the holder's last sign of life. Queued: when a worker last handed it back.
    heartbeat_at: datetime | None


RowT = TypeVar("RowT", bound=LeasedRow)
T = TypeVar("T")


@dataclass(frozen=True)
class LeaseToken:
    """What a worker holds: the row and the attempt that claimed it (the attempt token)."""

    job_id: int
    attempt: int


#: Locks the parent row of job ``job_id`` (``skip_locked`` or waiting); the parent, or None
#: when it is missing or another transaction holds it.
LockParent = Callable[[Session, int, bool], Any | None]
#: ``(db, parent, row, resumed) -> claim``: the kind's part of a claim, after the lease
#: columns are set; returning None refuses the job (nothing is committed).
OnClaim = Callable[[Session, Any, Any, bool], T | None]
#: ``(db, parent, row)``: the kind's part of a release, failure or requeue.
OnChange = Callable[[Session, Any, Any], None]


class Lease(Generic[RowT]):
    """The lease over one job table (see the module doc)."""

    def __init__(
        self,
        table: type[RowT],
        *,
        kind: str,
        workable: Callable[[Select[tuple[int]]], Select[tuple[int]]] | None = None,
        changed_column: InstrumentedAttribute[Any] | None = None,
        lock_parent: LockParent | None = None,
    ) -> None:
        self.table = table
        self.kind = kind
        self._workable = workable
        self._changed_column = changed_column
        self._lock_parent = lock_parent

    # -- what is waiting -------------------------------------------------------------------

    @property
    def _t(self) -> Any:  # the mapped class, for column expressions
        return self.table

    def queued(self) -> Select[tuple[int]]:
        """Ids of queued rows that may run now, in the order they should."""
        query = select(self._t.id).where(self._t.status == JobState.QUEUED)
        return self._workable(query) if self._workable else query.order_by(self._t.id)

    def next_queued(
        self, *, session_factory: SessionFactory, exclude: Collection[int] = ()
    ) -> int | None:
        """The first queued row that may run now (``exclude``: ids a worker already skipped)."""
        with session_factory() as db:
            query = self.queued().limit(1)
            if exclude:
                query = query.where(self._t.id.not_in(sorted(exclude)))
            return db.scalar(query)

    def pending_ids(
        self, *, session_factory: SessionFactory, changed_before: datetime | None = None
    ) -> list[int]:
        """Queued rows a dispatcher should (re)enqueue: not handed back recently (their retry
        is scheduled) and, with ``changed_before``, not changed since (their message is on
        its way)."""
        query = self.queued().where(
            or_(self._t.heartbeat_at.is_(None), self._t.heartbeat_at < stale_before())
        )
        if changed_before is not None and self._changed_column is not None:
            query = query.where(self._changed_column < changed_before)
        with session_factory() as db:
            return list(db.scalars(query))

    def _abandoned_clause(self) -> ColumnElement[bool]:
        return (self._t.status == JobState.RUNNING) & (
            func.coalesce(self._t.heartbeat_at, self._t.started_at) < stale_before()
        )

    @staticmethod
    def abandoned(row: LeasedRow) -> bool:
        """A running row whose worker stopped beating (or never beat) for the stale period."""
        last = row.heartbeat_at or row.started_at
        return row.status == JobState.RUNNING and (last is None or last < stale_before())

    # -- locking ---------------------------------------------------------------------------

    def lock(
        self, db: Session, job_id: int, *, skip_locked: bool = False
    ) -> tuple[Any, RowT | None]:
        """Lock the parent (if the kind has one), then the row: ``(parent, row)``; the row is
        None when either is missing or (``skip_locked``) held by another transaction."""
        parent = None
        if self._lock_parent is not None:
            parent = self._lock_parent(db, job_id, skip_locked)
            if parent is None:
                return None, None
        row = db.scalar(
            select(self.table)
            .where(self._t.id == job_id)
            .with_for_update(skip_locked=skip_locked)
            .execution_options(populate_existing=True)
        )
        return parent, row

    def lock_held(self, db: Session, token: LeaseToken) -> tuple[Any, RowT] | None:
        """Lock parent and row; None unless the row is still ``running`` in the token's
        attempt (a later attempt, or a finished job, owns the outcome now)."""
        parent, row = self.lock(db, token.job_id)
        if row is None or row.status != JobState.RUNNING or row.attempts != token.attempt:
            return None
        return parent, row

    # -- the lease -------------------------------------------------------------------------

    def claim(
        self,
        *,
        session_factory: SessionFactory,
        job_id: int | None = None,
        on_claim: OnClaim[T] | None = None,
    ) -> T | LeaseToken | None:
        """Take ``job_id`` (or the first queued row that may run) if it is queued, or running
        but abandoned; commit ``running`` with ``attempts`` + 1. Returns what ``on_claim``
        makes of it (the kind's claim), else the :class:`LeaseToken`; None if the row is
        missing, held elsewhere, finished, or refused by ``on_claim``."""
        with session_factory() as db:
            if job_id is None:  # the first queued row no other transaction holds
                first = self.queued().limit(1)
                if self._lock_parent is None:  # with a parent, the parent is locked first
                    first = first.with_for_update(skip_locked=True, of=self.table)
                job_id = db.scalar(first)
                if job_id is None:
                    return None
            parent, row = self.lock(db, job_id, skip_locked=True)
            if row is None:
                return None
            resumed = self.abandoned(row)
            if row.status != JobState.QUEUED and not resumed:
                return None
            if resumed:
                log.warning(
                    "%s %s was abandoned by its worker; resuming it (attempt %s)",
                    self.kind, row.id, (row.attempts or 0) + 1,
                )
            now = utcnow()
            row.status = JobState.RUNNING
            row.attempts = (row.attempts or 0) + 1
            row.error = None
            row.started_at, row.finished_at, row.heartbeat_at = now, None, now
            token = LeaseToken(job_id=row.id, attempt=row.attempts)
            claimed: Any = token
            if on_claim is not None:
                claimed = on_claim(db, parent, row, resumed)
                if claimed is None:
                    db.rollback()
                    return None
            db.commit()
            return claimed

    def _update_held(
        self, db: Session, token: LeaseToken, values: dict[str, Any]
    ) -> bool:
        result = db.execute(
            update(self.table)
            .where(
                self._t.id == token.job_id,
                self._t.status == JobState.RUNNING,
                self._t.attempts == token.attempt,
            )
            .values(**values)
            .execution_options(synchronize_session=False)
        )
        return bool(result.rowcount)  # type: ignore[attr-defined]

    def beat(self, *, session_factory: SessionFactory, token: LeaseToken, **values: Any) -> bool:
        """Refresh the heartbeat (and set ``values``, e.g. progress) while the token holds
        the row, in its own short transaction; False once it does not."""
        with session_factory() as db:
            held = self._update_held(db, token, {"heartbeat_at": utcnow(), **values})
            db.commit()
            return held

    def _end_attempt(
        self,
        *,
        session_factory: SessionFactory,
        token: LeaseToken,
        hook: OnChange | None,
        **values: Any,
    ) -> bool:
        """Set ``values`` on the row the token holds and run the kind's ``hook``, in one
        transaction; False (nothing written) when the token no longer holds it."""
        with session_factory() as db:
            held = self.lock_held(db, token)
            if held is None:
                return False
            parent, row = held
            for name, value in values.items():
                setattr(row, name, value)
            if hook is not None:
                hook(db, parent, row)
            db.commit()
            return True

    def release(
        self,
        *,
        session_factory: SessionFactory,
        token: LeaseToken,
        error: str,
        on_release: OnChange | None = None,
    ) -> bool:
        """Hand a job hit by a transient fault back to the queue (a retry is scheduled); its
        ``heartbeat_at`` makes the dispatcher leave it to that retry a while."""
        return self._end_attempt(
            session_factory=session_factory, token=token, hook=on_release,
            status=JobState.QUEUED, error=error, heartbeat_at=utcnow(),
        )

    def fail(
        self,
        *,
        session_factory: SessionFactory,
        token: LeaseToken,
        error: str,
        on_fail: OnChange | None = None,
    ) -> bool:
        """Mark the held job ``failed`` with ``error`` (and the kind's audit, in ``on_fail``)."""
        return self._end_attempt(
            session_factory=session_factory, token=token, hook=on_fail,
            status=JobState.FAILED, error=error, finished_at=utcnow(),
        )

    def requeue_abandoned(
        self, *, session_factory: SessionFactory, on_requeue: OnChange | None = None
    ) -> list[int]:
        """Put ``running`` rows whose heartbeat is stale (their worker died) back in the
        queue; their ids. Safe while other workers run: a live job beats, and rows another
        transaction holds are skipped."""
        with session_factory() as db:
            candidates = list(db.scalars(select(self._t.id).where(self._abandoned_clause())))
            moved: list[int] = []
            for job_id in candidates:
                parent, row = self.lock(db, job_id, skip_locked=True)
                if row is None or not self.abandoned(row):
                    continue
                last = row.heartbeat_at or row.started_at
                log.warning(
                    "%s %s was abandoned by its worker (no heartbeat since %s); re-queued",
                    self.kind, job_id, last.isoformat() if last else "the claim",
                )
                if on_requeue is not None:  # sees the row as it was abandoned
                    on_requeue(db, parent, row)
                row.status = JobState.QUEUED
                row.heartbeat_at = utcnow()  # left a while to a message sent for it now
                moved.append(job_id)
            db.commit()
            return moved

    def requeue_interrupted(
        self, *, session_factory: SessionFactory, on_requeue: OnChange | None = None
    ) -> int:
        """Re-queue every ``running`` row; how many. Only for the start of a deployment whose
        worker is the only one (the embedded default): elsewhere a running job may be alive."""
        with session_factory() as db:
            ids: Sequence[int] = list(
                db.scalars(select(self._t.id).where(self._t.status == JobState.RUNNING))
            )
            moved = 0
            for job_id in ids:
                parent, row = self.lock(db, job_id)
                if row is None or row.status != JobState.RUNNING:
                    continue
                row.status = JobState.QUEUED
                if on_requeue is not None:
                    on_requeue(db, parent, row)
                moved += 1
            db.commit()
            return moved
