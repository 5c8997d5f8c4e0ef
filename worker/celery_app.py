"""The Celery app of the distributed deployment: Redis broker, PostgreSQL as the truth.

Configured from :class:`api.config.Settings` (``LETHE_*``). The choices, and why:

- ``task_acks_late`` + ``task_reject_on_worker_lost``: a task is acknowledged when it
  *ends*, so a worker that dies mid-job leaves its message to be redelivered instead of
  losing it (with the prefork pool, a child killed by a signal or OOM requeues it at once).
- ``worker_prefetch_multiplier = 1``: a busy worker holds no message but the one it runs,
  so queued work goes to an idle worker instead of waiting behind an hour-long job.
- ``visibility_timeout`` (``LETHE_VISIBILITY_TIMEOUT_SECONDS``, 2 h): Redis redelivers a
  message unacknowledged for that long, whether or not its worker still lives. Size it
  above the longest job (a retrain, SISA shards, a big model's training) so a healthy job
  is not delivered twice; a duplicate is harmless anyway (the job is found ``running``
  with a fresh heartbeat, or done, and the task exits). Recovering from a dead worker does
  not wait for it: the dispatcher re-queues a job once its heartbeat is older than
  ``LETHE_JOB_STALE_SECONDS``.
- JSON only: tasks carry ids (``job_id``, ``run_pk``), never pickles.
- No result backend: the job rows in the database are the results.
- Routes: training and unlearning tasks go to ``LETHE_WORK_QUEUE`` (``cpu`` by default;
  ``gpu`` in a deployment with GPU workers); everything else to ``cpu``. ``lethe worker
  --device cuda:N`` consumes ``gpu`` and ``cpu`` (it can do CPU-routed work faster),
  ``--device cpu`` only ``cpu``. So a CPU helper never picks up work meant for a GPU.

``celery -A worker.celery_app worker -P solo`` works too; ``lethe worker`` wraps it with
the device and queue defaults.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import Celery
from celery.signals import setup_logging, worker_process_init, worker_ready, worker_shutting_down

from api.config import Settings, get_settings
from api.wake import CPU_QUEUE, broker_conf, queue_of

log = logging.getLogger("lethe.celery")


def route_task(
    name: str, args: Any, kwargs: Any, options: Any, task: Any = None, **kw: Any
) -> dict:
    """Celery router: device work to the configured work queue, the rest to ``cpu``."""
    return {"queue": queue_of(name)}


def create_celery(settings: Settings | None = None) -> Celery:
    """A Celery app for ``settings.broker_url`` (``memory://`` when unset: embedded mode
    sends nothing; see :mod:`api.wake`, which sends the tasks)."""
    s = settings or get_settings()
    app = Celery("lethe", broker=s.broker_url or "memory://", include=["worker.tasks"])
    app.conf.update(
        **broker_conf(s.visibility_timeout_seconds),
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_default_queue=CPU_QUEUE,
        task_routes=(route_task,),
        broker_connection_retry_on_startup=True,
        # A Redis blip must not abort an hour-long GPU job: the task goes on, and the
        # database (not the broker) decides whether its result counts.
        worker_cancel_long_running_tasks_on_connection_loss=False,
        worker_hijack_root_logger=True,
        worker_redirect_stdouts=False,
    )
    return app


app = create_celery()


# --- worker process hooks (they fire only inside a Celery worker) ----------------------

_dispatcher: Any = None


@setup_logging.connect
def _configure_logging(loglevel: Any = None, **_kw: Any) -> None:
    """Our JSON (or text) lines instead of Celery's own format: a receiver here tells Celery
    not to configure logging itself. Task lines carry the erasure request's ids."""
    from api.observability.logs import configure_logging

    settings = get_settings()
    configure_logging(loglevel or settings.log_level, settings.log_format)


@worker_ready.connect
def _start_dispatcher(sender: Any = None, **_kw: Any) -> None:
    global _dispatcher
    from worker.dispatch import Dispatcher

    port = get_settings().worker_metrics_port
    if port:  # this worker's job histograms (the API's /metrics has the database gauges)
        from api.observability.metrics import serve_worker_metrics

        serve_worker_metrics(port, get_settings().worker_metrics_addr)
    interval = get_settings().dispatch_interval_seconds
    if interval <= 0:
        log.info("dispatcher off (LETHE_DISPATCH_INTERVAL_SECONDS=0)")
        return
    _dispatcher = Dispatcher(interval=interval, app=app)
    _dispatcher.start()


@worker_shutting_down.connect
def _stop_dispatcher(**_kw: Any) -> None:
    if _dispatcher is not None:
        _dispatcher.stop()


@worker_process_init.connect
def _forget_parent_connections(**_kw: Any) -> None:
    """A prefork child must not use the database connections it inherited from the parent."""
    from api.database.core import get_engine

    get_engine().dispose(close=False)
