"""The job lease on a job kind of its own: a table and a function, nothing else.

A toy job table (its own metadata, created in the test's PostgreSQL database) gets the
whole lease: claim with an attempt token, heartbeat, stale detection, release and fail with
a bounded error, requeue of abandoned and interrupted work, pending ids, and the
retry-if-transient-else-fail policy. The erasure and training kinds are tested end to end
elsewhere (test_erasure_api, test_registry_api, test_celery_workers, test_faults).
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta

import pytest
from sqlalchemy import Integer, String, update
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from api.database.core import UTCDateTime, utcnow
from api.jobs.lease import Lease, LeaseToken
from api.jobs.policy import ERROR_LIMIT, FAILED, execute
from api.jobs.states import JobState
from unlearning_core.errors import RunError


class ToyBase(DeclarativeBase):
    pass


class ToyJob(ToyBase):
    """A job kind with nothing but the lease columns and one of its own."""

    __tablename__ = "toy_jobs"

    id: Mapped[int] = mapped_column(primary_key=True)
    status: Mapped[str] = mapped_column(String(16), default=JobState.QUEUED)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str | None] = mapped_column(String(ERROR_LIMIT), nullable=True)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    heartbeat_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    result: Mapped[str | None] = mapped_column(String(64), nullable=True)


LEASE: Lease[ToyJob] = Lease(ToyJob, kind="toy job")


@pytest.fixture
def factory(service_env: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[sessionmaker[Session]]:
    from api.config import get_settings
    from api.database.core import get_engine, get_sessionmaker

    monkeypatch.setenv("LETHE_JOB_STALE_SECONDS", "5")
    get_settings.cache_clear()
    engine = get_engine()
    ToyBase.metadata.drop_all(engine)
    ToyBase.metadata.create_all(engine)
    yield get_sessionmaker()
    ToyBase.metadata.drop_all(engine)
    get_settings.cache_clear()


def add_jobs(factory: sessionmaker[Session], n: int) -> list[int]:
    with factory() as db:
        jobs = [ToyJob() for _ in range(n)]
        db.add_all(jobs)
        db.commit()
        return [j.id for j in jobs]


def age(factory: sessionmaker[Session], job_id: int, seconds: float) -> None:
    """The holder stopped beating ``seconds`` ago."""
    with factory() as db:
        db.execute(
            update(ToyJob)
            .where(ToyJob.id == job_id)
            .values(heartbeat_at=utcnow() - timedelta(seconds=seconds))
        )
        db.commit()


def row(factory: sessionmaker[Session], job_id: int) -> ToyJob:
    with factory() as db:
        job = db.get(ToyJob, job_id)
        assert job is not None
        return job


def record(factory: sessionmaker[Session], token: LeaseToken, value: str) -> bool:
    """The kind's work records its result only while its token holds the row."""
    with factory() as db:
        held = LEASE.lock_held(db, token)
        if held is None:
            return False
        _parent, job = held
        job.result, job.status, job.finished_at = value, JobState.COMPLETED, utcnow()
        db.commit()
        return True


def test_claim_token_stale_and_requeue(factory: sessionmaker[Session]) -> None:
    first, second = add_jobs(factory, 2)
    token = LEASE.claim(session_factory=factory)  # the oldest queued one
    assert token == LeaseToken(job_id=first, attempt=1)
    assert LEASE.claim(session_factory=factory, job_id=first) is None  # held and alive
    assert LEASE.beat(session_factory=factory, token=token)
    assert LEASE.requeue_abandoned(session_factory=factory) == []
    assert LEASE.pending_ids(session_factory=factory) == [second]

    age(factory, first, 60)  # its worker died
    assert LEASE.abandoned(row(factory, first))
    assert LEASE.requeue_abandoned(session_factory=factory) == [first]
    assert row(factory, first).status == JobState.QUEUED
    # just handed back: left a while to the message sent with it, then pending again
    assert LEASE.pending_ids(session_factory=factory) == [second]
    age(factory, first, 60)
    assert LEASE.pending_ids(session_factory=factory) == [first, second]

    again = LEASE.claim(session_factory=factory, job_id=first)
    assert again == LeaseToken(job_id=first, attempt=2)
    age(factory, first, 60)  # a stale running job is claimed directly too
    newest = LEASE.claim(session_factory=factory, job_id=first)
    assert newest == LeaseToken(job_id=first, attempt=3)

    # the zombie attempts can neither beat, nor record, nor fail, nor release it
    assert not LEASE.beat(session_factory=factory, token=token)
    assert not record(factory, again, "zombie")
    assert not LEASE.fail(session_factory=factory, token=again, error="late")
    assert not LEASE.release(session_factory=factory, token=token, error="late")
    assert record(factory, newest, "done")
    job = row(factory, first)
    assert (job.status, job.result, job.attempts, job.error) == ("completed", "done", 3, None)
    assert LEASE.claim(session_factory=factory, job_id=first) is None  # finished


def test_requeue_interrupted_takes_every_running_job(factory: sessionmaker[Session]) -> None:
    ids = add_jobs(factory, 3)
    for _ in ids[:2]:
        assert LEASE.claim(session_factory=factory) is not None
    assert LEASE.requeue_interrupted(session_factory=factory) == 2
    assert [row(factory, i).status for i in ids] == ["queued"] * 3
    assert LEASE.next_queued(session_factory=factory, exclude={ids[0]}) == ids[1]


def test_policy_retries_transient_faults_and_fails_the_rest(
    factory: sessionmaker[Session],
) -> None:
    (job_id,) = add_jobs(factory, 1)
    token = LEASE.claim(session_factory=factory, job_id=job_id)
    assert isinstance(token, LeaseToken)

    def unreachable() -> str:
        raise OperationalError("SELECT 1", {}, Exception("server closed the connection"))

    with pytest.raises(OperationalError):  # released for the task's retry, then re-raised
        execute(LEASE, session_factory=factory, token=token, work=unreachable, what="toy",
                retry_transient=True)
    job = row(factory, job_id)
    assert job.status == JobState.QUEUED and "server closed the connection" in (job.error or "")

    token = LEASE.claim(session_factory=factory, job_id=job_id)
    assert isinstance(token, LeaseToken) and token.attempt == 2
    failed: list[str | None] = []

    def broken() -> str:
        raise RunError("x" * 5000)

    outcome = execute(
        LEASE, session_factory=factory, token=token, work=broken, what="toy",
        retry_transient=True, on_fail=lambda db, parent, j: failed.append(j.error),
    )
    assert outcome is FAILED
    job = row(factory, job_id)
    assert job.status == JobState.FAILED and job.finished_at is not None
    assert job.error is not None and len(job.error) == ERROR_LIMIT and job.error.startswith("xxx")
    assert failed == [job.error]  # the kind's hook saw it (and would audit it)

    (other,) = add_jobs(factory, 1)
    token = LEASE.claim(session_factory=factory, job_id=other)
    assert isinstance(token, LeaseToken)
    outcome = execute(  # the last try: a transient fault fails the job like any other
        LEASE, session_factory=factory, token=token, work=unreachable, what="toy",
        retry_transient=False,
    )
    assert outcome is FAILED and row(factory, other).status == JobState.FAILED
    assert "internal error (OperationalError" in (row(factory, other).error or "")

    (last,) = add_jobs(factory, 1)
    token = LEASE.claim(session_factory=factory, job_id=last)
    assert isinstance(token, LeaseToken)
    assert execute(LEASE, session_factory=factory, token=token, what="toy",
                   work=lambda: record(factory, token, "ok")) is True
    assert row(factory, last).result == "ok"
