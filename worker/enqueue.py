"""Sending work to the Celery workers, from the API and from the dispatcher.

Best effort by design: the database row is the truth, the message only a wake-up call. If
the broker is down the API logs a warning and still answers 202; a worker's dispatcher
finds the queued row and enqueues it later. Without ``LETHE_BROKER_URL`` (the embedded
mode) nothing is sent at all: the embedded worker polls the database.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from api.config import get_settings

log = logging.getLogger("lethe.enqueue")


def _send(app: Any, task: str, ids: Iterable[int], what: str) -> int:
    settings = get_settings()
    if app is None:
        if not settings.broker_url:
            return 0
        from worker.celery_app import producer

        app = producer(settings.broker_url)
    sent = 0
    ids = list(ids)
    for pk in ids:
        try:
            app.send_task(task, args=[int(pk)], queue=settings.work_queue)
        except Exception as exc:  # noqa: BLE001 - the broker is down: the dispatcher catches up
            log.warning(
                "broker unreachable (%s: %s); %s %s stay queued in the database for the dispatcher",
                type(exc).__name__,
                exc,
                what,
                ", ".join(str(i) for i in ids[sent:]),
            )
            break
        sent += 1
    return sent


def enqueue_jobs(job_ids: Iterable[int], *, app: Any = None) -> int:
    """``lethe.process_job`` for each erasure job; how many were sent (0 in embedded mode)."""
    if app is None and not get_settings().broker_url:
        return 0
    from worker.celery_app import PROCESS_JOB

    return _send(app, PROCESS_JOB, job_ids, "erasure job(s)")


def enqueue_training(run_pks: Iterable[int], *, app: Any = None) -> int:
    """``lethe.train_run`` for each training run; how many were sent."""
    if app is None and not get_settings().broker_url:
        return 0
    from worker.celery_app import TRAIN_RUN

    return _send(app, TRAIN_RUN, run_pks, "training run(s)")


def enqueue_sisa_shard(run_pk: int, shard: int, *, app: Any = None) -> None:
    """``lethe.train_sisa_shard`` for one shard of a SISA training run; raises if the broker
    cannot take it (the caller decides: see :func:`api.registry.flows.fan_out_sisa_training`)."""
    settings = get_settings()
    from worker.celery_app import TRAIN_SISA_SHARD, producer

    if app is None:
        if not settings.broker_url:
            raise RuntimeError("no broker configured (LETHE_BROKER_URL)")
        app = producer(settings.broker_url)
    app.send_task(TRAIN_SISA_SHARD, args=[int(run_pk), int(shard)], queue=settings.work_queue)
