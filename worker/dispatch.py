"""The dispatcher: the database is the queue of record, the broker only wakes workers up.

Every ``lethe worker`` runs a dispatcher thread (``LETHE_DISPATCH_INTERVAL_SECONDS``, 10 s;
a thread rather than Celery beat, so there is no extra process to deploy and every worker
can take over when another dies). One round (:func:`dispatch_once`):

0. *webhooks*: deliveries whose worker died go back to ``queued``; due ones (a retry's
   ``next_attempt_at`` passed, or a lost message) are enqueued, once per stale period;
   *purge* (every ``LETHE_PURGE_INTERVAL_SECONDS``): blobs that still hold erased data and
   that nothing needs any more are deleted (:mod:`api.purge.service`);
   *erasure policies*: a model whose policy fires (a request approximate for too long, too
   many of them, too much subtracted, accuracy drifted) gets a compaction queued
   (:func:`api.compaction.service.schedule_due`);
1. *abandoned work*: ``running`` jobs and training runs whose heartbeat is older than
   ``LETHE_JOB_STALE_SECONDS`` (their worker died: kill -9, OOM, lost machine) go back to
   ``queued`` (audited ``job.requeued``) and are enqueued once;
2. *pending work*: queued jobs of workable requests and queued training runs, filed or
   changed (approved, retried) before the last interval, are enqueued when the work
   queue is empty. An empty queue with queued rows means their messages
   were never sent (the broker was down when the API took the request) or were lost; a
   non-empty one means workers are busy and will come back for more, so enqueueing again
   would only pile up duplicates. Jobs handed back for a scheduled retry are left to it
   until they are stale.

Several dispatchers (one per worker) are safe: on PostgreSQL a round holds a transaction
advisory lock, so rounds do not overlap, and a duplicate message is harmless anyway (the
claim locks the job ``FOR UPDATE SKIP LOCKED`` and takes it only while it is queued).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

from sqlalchemy import text

from api import wake
from api.config import get_settings
from api.database.core import get_engine, get_sessionmaker, utcnow
from api.compaction import service as compaction
from api.erasure import flows as erasure
from api.purge import service as purge
from api.registry import flows as registry
from api.webhooks import flows as webhooks

log = logging.getLogger("lethe.dispatch")

#: pg advisory lock key of a dispatch round ("lethe" in ASCII).
LOCK_KEY = 0x6C65746865


@contextmanager
def _round_lock() -> Iterator[bool]:
    """True if this process may dispatch now (on PostgreSQL: no other round is running)."""
    engine = get_engine()
    if engine.dialect.name != "postgresql":
        yield True
        return
    with engine.connect() as conn, conn.begin():
        yield bool(conn.scalar(text("SELECT pg_try_advisory_xact_lock(:k)"), {"k": LOCK_KEY}))


class Every:
    """A chore of this process that runs at most once per ``interval`` seconds (the first
    call is due at once; an interval of 0 or less means never)."""

    def __init__(self) -> None:
        self._last: float | None = None

    def due(self, interval: float) -> bool:
        now = time.monotonic()
        if interval <= 0 or (self._last is not None and now - self._last < interval):
            return False
        self._last = now
        return True


#: This process's purge sweep (``LETHE_PURGE_INTERVAL_SECONDS``).
PURGE = Every()


def queue_depth(app: Any, queue: str) -> int | None:
    """Messages waiting in ``queue`` (0 if it does not exist yet; None if unknown)."""
    try:
        with app.connection_for_write() as conn:
            channel = conn.default_channel
            try:
                return int(channel.queue_declare(queue=queue, passive=True).message_count)
            except Exception as exc:  # kombu: a queue never used does not exist
                if "NOT_FOUND" in str(exc) or type(exc).__name__ in ("NotFound", "ChannelError"):
                    return 0
                raise
    except Exception as exc:  # noqa: BLE001
        log.warning("cannot read the depth of queue %r: %s", queue, exc)
        return None


def enqueue_jobs(job_ids: list[int], *, app: Any) -> int:
    return wake.send(wake.PROCESS_JOB, [(j,) for j in job_ids], app=app)


def enqueue_training(run_pks: list[int], *, app: Any) -> int:
    return wake.send(wake.TRAIN_RUN, [(r,) for r in run_pks], app=app)


def dispatch_once(app: Any) -> dict[str, int]:
    """One dispatch round (see the module doc) with ``app``'s broker; counts of what it did."""
    settings = get_settings()
    session_factory = get_sessionmaker()
    report = {"requeued_jobs": 0, "requeued_runs": 0, "enqueued_jobs": 0, "enqueued_runs": 0}
    with _round_lock() as mine:
        if not mine:
            report["skipped"] = 1
            return report
        try:  # the erasure policies' triggers (a compaction queued is enqueued on commit)
            report["compactions_queued"] = len(compaction.schedule_due(session_factory=session_factory))
        except Exception as exc:  # noqa: BLE001 - the rest of the round still runs
            log.warning("could not check the erasure policies: %s", exc)
        if PURGE.due(settings.purge_interval_seconds):
            try:
                report["blobs_purged"] = purge.sweep(session_factory=session_factory)
            except Exception as exc:  # noqa: BLE001
                log.warning("purge round failed: %s", exc)
        jobs = erasure.requeue_abandoned(session_factory=session_factory)
        runs = registry.requeue_abandoned_training(session_factory=session_factory)
        report["requeued_jobs"], report["requeued_runs"] = len(jobs), len(runs)
        if jobs or runs:
            log.warning(
                "re-queued work abandoned by dead workers: jobs %s, training runs %s", jobs, runs
            )
        report["enqueued_runs"] += enqueue_training(runs, app=app)
        report["enqueued_jobs"] += enqueue_jobs(jobs, app=app)
        try:  # webhook deliveries: abandoned ones and those due (retries) get a message
            due = webhooks.requeue_abandoned(session_factory=session_factory)
            due += webhooks.due_ids(session_factory=session_factory)
            report["enqueued_webhooks"] = wake.send(wake.DELIVER_WEBHOOK, [(d,) for d in due], app=app)
        except Exception as exc:  # noqa: BLE001
            log.warning("webhook delivery round failed: %s", exc)
        depth = queue_depth(app, settings.work_queue)
        report["queue_depth"] = -1 if depth is None else depth
        if depth:  # workers are busy with what is queued; they come back for the rest
            return report
        # Work filed in the last interval has its message on the way (or in a worker about
        # to claim it): leave it to the next round.
        settled = utcnow() - timedelta(seconds=settings.dispatch_interval_seconds)
        pending_runs = [
            r
            for r in registry.pending_run_ids(
                session_factory=session_factory, created_before=settled
            )
            if r not in runs
        ]
        pending_jobs = [
            j
            for j in erasure.pending_job_ids(
                session_factory=session_factory, changed_before=settled
            )
            if j not in jobs
        ]
        if pending_runs or pending_jobs:
            log.info(
                "enqueueing pending work found in the database: jobs %s, training runs %s",
                pending_jobs,
                pending_runs,
            )
        report["enqueued_runs"] += enqueue_training(pending_runs, app=app)
        report["enqueued_jobs"] += enqueue_jobs(pending_jobs, app=app)
    return report


class Dispatcher:
    """A daemon thread running :func:`dispatch_once` at once and then every ``interval``."""

    def __init__(self, *, interval: float, app: Any) -> None:
        self.interval = interval
        self.app = app
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                report = dispatch_once(self.app)
                if any(
                    report.get(k)
                    for k in (
                        "requeued_jobs", "requeued_runs", "enqueued_jobs", "enqueued_runs",
                        "compactions_queued", "blobs_purged", "enqueued_webhooks",
                    )
                ):
                    log.info("dispatch: %s", report)
            except Exception as exc:  # noqa: BLE001 - the database may be away; try again later
                log.warning("dispatch round failed: %s", exc)
            self._stop.wait(self.interval)

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="lethe-dispatcher", daemon=True)
        self._thread.start()
        log.info("dispatcher started (every %ss)", self.interval)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
            self._thread = None
