"""Waking the workers: Celery tasks sent by name, after the transaction that queued the work
commits. The one place outside ``worker/`` that knows a broker exists.

Best effort by design: the database row is the truth, the message only a wake-up call. If
the broker is down a warning is logged and the API still answers; a worker's dispatcher
finds the queued row and enqueues it later. Without ``LETHE_BROKER_URL`` (the embedded
mode) nothing is sent at all: the embedded worker polls the database.

Services call :func:`after_commit` with the rows they queued; the message leaves only once
the session commits (never for a rolled-back transaction, and never before the row is
visible to the worker that receives it). The dispatcher calls :func:`send` directly.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from functools import lru_cache
from typing import Any, Final

from celery import Celery
from sqlalchemy import event
from sqlalchemy.orm import Session

from api.config import get_settings

log = logging.getLogger("lethe.wake")

#: Queues: device work goes to ``LETHE_WORK_QUEUE`` (``cpu``, or ``gpu`` where GPU workers
#: consume it), everything else to ``cpu``.
CPU_QUEUE: Final = "cpu"
GPU_QUEUE: Final = "gpu"
#: Task names (the worker registers its tasks under these; see ``worker/tasks.py``).
PROCESS_JOB: Final = "lethe.process_job"
TRAIN_RUN: Final = "lethe.train_run"
TRAIN_SISA_SHARD: Final = "lethe.train_sisa_shard"
DISPATCH: Final = "lethe.dispatch"
DELIVER_WEBHOOK: Final = "lethe.deliver_webhook"  # cpu queue: an HTTP POST, no device
#: Tasks that use a worker's device (routed to ``LETHE_WORK_QUEUE``).
DEVICE_TASKS: Final = frozenset({PROCESS_JOB, TRAIN_RUN, TRAIN_SISA_SHARD})


def queue_of(task: str) -> str:
    """The queue ``task`` goes to (also the worker's Celery router)."""
    return get_settings().work_queue if task in DEVICE_TASKS else CPU_QUEUE


def broker_conf(visibility_timeout_seconds: float) -> dict[str, Any]:
    """Celery settings every Lethe app shares, the sending ones here and the worker's
    (``worker/celery_app.py``): JSON only (tasks carry ids, never pickles), no results (the
    job rows are the results), and a bounded publish retry so a dead broker costs a request
    well under a second."""
    return {
        "task_serializer": "json",
        "accept_content": ["json"],
        "result_serializer": "json",
        "task_ignore_result": True,
        "result_backend": None,
        "broker_transport_options": {
            "visibility_timeout": visibility_timeout_seconds,
            "socket_connect_timeout": 5,
        },
        "broker_connection_timeout": 5,
        "task_publish_retry": True,
        "task_publish_retry_policy": {
            "max_retries": 2,
            "interval_start": 0,
            "interval_step": 0.2,
            "interval_max": 0.5,
        },
    }


@lru_cache
def producer(broker_url: str) -> Celery:
    """A Celery app that only sends (the API process, the dispatcher), one per broker URL."""
    app = Celery("lethe-producer", broker=broker_url)
    app.conf.update(broker_conf(get_settings().visibility_timeout_seconds))
    return app


def _app(app: Any) -> Any | None:
    if app is not None:
        return app
    url = get_settings().broker_url
    return producer(url) if url else None


def send(task: str, calls: Iterable[Sequence[int]], *, app: Any = None) -> int:
    """Send ``task`` once per argument tuple in ``calls``; how many were sent (0 in embedded
    mode). Stops at the first broker error (logged): the rest stay queued in the database
    for the dispatcher."""
    sender = _app(app)
    if sender is None:
        return 0
    calls = [tuple(int(a) for a in args) for args in calls]
    queue = queue_of(task)
    sent = 0
    for args in calls:
        try:
            sender.send_task(task, args=list(args), queue=queue)
        except Exception as exc:  # noqa: BLE001 - the broker is down: the dispatcher catches up
            log.warning(
                "broker unreachable (%s: %s); %s %s stays queued in the database for the dispatcher",
                type(exc).__name__,
                exc,
                task,
                ", ".join(str(list(a)) for a in calls[sent:]),
            )
            break
        sent += 1
    return sent


def send_one(task: str, *args: int, app: Any = None) -> None:
    """Send one task or raise (the caller decides what a broker error means)."""
    sender = _app(app)
    if sender is None:
        raise RuntimeError("no broker configured (LETHE_BROKER_URL)")
    sender.send_task(task, args=[int(a) for a in args], queue=queue_of(task))


def after_commit(db: Session, task: str, ids: Iterable[int]) -> None:
    """Send ``task(id)`` for each id once ``db`` commits (nothing if it rolls back)."""
    calls = [(int(i),) for i in ids]
    if not calls or not get_settings().broker_url:
        return

    live = [True]  # until the transaction ends, one way or the other

    def _send(_session: Session) -> None:
        if live[0]:
            live[0] = False
            send(task, calls)

    def _drop(_session: Session, _previous: Any) -> None:
        live[0] = False

    event.listen(db, "after_commit", _send, once=True)
    event.listen(db, "after_soft_rollback", _drop, once=True)
