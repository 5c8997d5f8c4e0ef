"""One policy for a held job: retry with backoff if the fault is transient, else fail and audit.

:func:`execute` runs a job's work under its lease, with the heartbeat thread beating:

- the work returns: its result is returned (the work records it under the lease itself);
- a transient fault (:func:`api.errors.is_transient`: database or blob store unreachable,
  a deadlock) while the caller still has retries (a Celery task below its
  ``max_retries``): the job is released back to ``queued`` and the exception re-raised, so
  the task retries with the backoff of :data:`CELERY_RETRY` (1, 2, 4, 8, 16 s, jittered,
  at most 60 s);
- anything else (or a transient fault on the last try): the job is failed with
  :func:`error_text`, one readable line of at most :data:`ERROR_LIMIT` characters, and the
  kind's ``on_fail`` hook audits it; :data:`FAILED` is returned and the worker goes on.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Final, TypeVar

from api.config import get_settings
from api.errors import TRANSIENT_ERRORS, is_transient
from api.jobs.heartbeat import Heartbeat
from api.jobs.lease import Lease, LeaseToken, OnChange, SessionFactory
from unlearning_core.errors import BlobNotFoundError, LetheError

log = logging.getLogger("lethe.jobs")

R = TypeVar("R")

#: The length of every job's and request's ``error`` column.
ERROR_LIMIT: Final = 2000


class _Failed:
    def __repr__(self) -> str:
        return "FAILED"


#: What :func:`execute` returns when the job failed (its error is recorded on the row).
FAILED: Final = _Failed()


def bounded(text: str) -> str:
    """``text`` cut to fit an ``error`` column."""
    return text if len(text) <= ERROR_LIMIT else text[: ERROR_LIMIT - 1] + "…"


def error_text(exc: BaseException) -> str:
    """One readable, bounded line for a job's error: the message of Lethe's own errors
    (they are written for the user), the type and message of anything else."""
    text = str(exc) if isinstance(exc, LetheError) else f"internal error ({type(exc).__name__}: {exc})"
    return bounded(text)


def celery_retry_options() -> dict[str, Any]:
    """Celery task options of every job task: autoretry on transient faults with backoff."""
    return {
        "autoretry_for": TRANSIENT_ERRORS,
        "retry_backoff": True,
        "retry_backoff_max": 60,
        "retry_jitter": True,
        "max_retries": get_settings().task_max_retries,
    }


def execute(
    lease: Lease[Any],
    *,
    session_factory: SessionFactory,
    token: LeaseToken,
    work: Callable[[], R],
    what: str,
    retry_transient: bool = False,
    release_on_transient: bool = True,
    on_release: OnChange | None = None,
    on_fail: OnChange | None = None,
    heartbeat: bool = True,
) -> R | _Failed:
    """Run ``work`` for the job ``token`` holds, under the policy of the module doc.

    ``what`` names the job in log lines. ``release_on_transient=False`` leaves a job
    ``running`` on a transient fault (a SISA shard task: its run goes on while other shards
    train, and is requeued once stale if nobody beats for it). ``heartbeat=False`` when the
    caller keeps the heartbeat itself.
    """
    try:
        if heartbeat:
            beat = lambda: lease.beat(session_factory=session_factory, token=token)  # noqa: E731
            with Heartbeat(beat, name=f"{lease.kind}-{token.job_id}"):
                return work()
        return work()
    except Exception as exc:  # the job's failure, recorded on it; the worker goes on
        if retry_transient and is_transient(exc):
            log.warning("%s hit a transient fault, will retry: %s", what, exc)
            if release_on_transient:
                try:
                    lease.release(
                        session_factory=session_factory,
                        token=token,
                        error=error_text(exc),
                        on_release=on_release,
                    )
                except Exception as again:  # noqa: BLE001 - the database is away too
                    log.warning(
                        "could not hand %s back (%s); it is resumed once its heartbeat is stale",
                        what,
                        again,
                    )
            raise
        if isinstance(exc, LetheError) and not isinstance(exc, BlobNotFoundError):
            log.warning("%s failed: %s", what, exc)
        else:
            log.exception("%s failed", what)
        lease.fail(
            session_factory=session_factory, token=token, error=error_text(exc), on_fail=on_fail
        )
        return FAILED
