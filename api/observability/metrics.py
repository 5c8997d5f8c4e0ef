"""Prometheus metrics (``prometheus-client``).

Two kinds, kept in two registries:

- **process metrics** (:data:`PROCESS_REGISTRY`): what happens in *this* process, observed
  where it happens: HTTP latency (the middleware), erasure job durations and unlearning
  seconds (where a worker finishes a job: the embedded worker in the API process, or a
  Celery worker, which serves them on its own port, see :func:`serve_worker_metrics`);
- **state metrics** (:data:`STATE_REGISTRY`): requests by state, overdue requests, queue
  depth, computed from the database at scrape time by :class:`DatabaseCollector`, so every
  API replica reports the same, right numbers however many processes changed them. Only
  the API's ``/metrics`` serves them (a worker serving them too would double them).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Iterator

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

log = logging.getLogger("lethe.metrics")

PROCESS_REGISTRY = CollectorRegistry()
STATE_REGISTRY = CollectorRegistry()
for _collector in (ProcessCollector, PlatformCollector, GCCollector):
    _collector(registry=PROCESS_REGISTRY)

HTTP_LATENCY = Histogram(
    "lethe_http_request_duration_seconds",
    "HTTP request latency by method, route template (not the raw path) and status code",
    ("method", "route", "status"),
    registry=PROCESS_REGISTRY,
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
JOB_DURATION = Histogram(
    "lethe_job_duration_seconds",
    "Wall time of an erasure job attempt (claim to result) by unlearning method and outcome",
    ("method", "outcome"),
    registry=PROCESS_REGISTRY,
    buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 14400),
)
UNLEARN_SECONDS = Histogram(
    "lethe_unlearn_seconds",
    "Seconds spent removing the samples (the method's unlearn_seconds, without evaluation)",
    ("method",),
    registry=PROCESS_REGISTRY,
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600),
)


COMPACTION_DURATION = Histogram(
    "lethe_compaction_duration_seconds",
    "Wall time of a compaction attempt (retraining without the erased samples, then publishing)",
    ("outcome",),
    registry=PROCESS_REGISTRY,
    buckets=(1, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 7200, 14400, 43200, 86400),
)


PURGE_FAILURES = Counter(
    "lethe_purge_failures",
    "Deletions the purge sweep gave up on after retrying, by purge reason (retried next round)",
    ("reason",),
    registry=PROCESS_REGISTRY,
)


def count_purge_failure(*, reason: str) -> None:
    PURGE_FAILURES.labels(reason=reason).inc()


def observe_compaction(*, outcome: str, seconds: float) -> None:
    COMPACTION_DURATION.labels(outcome=outcome).observe(seconds)


def observe_job(*, method: str, outcome: str, seconds: float) -> None:
    JOB_DURATION.labels(method=method, outcome=outcome).observe(seconds)


def observe_unlearn(*, method: str, seconds: float | None) -> None:
    if seconds is not None:
        UNLEARN_SECONDS.labels(method=method).observe(seconds)


class DatabaseCollector(Collector):
    """Gauges read from the database at scrape time (every tenant: an operator's view).

    ``lethe_metrics_database_up`` is 0 and the other gauges are missing when the database
    does not answer, so a scrape never fails because of it.
    """

    def describe(self) -> Iterable[Metric]:
        return []  # computed at scrape time; nothing to check at registration

    def collect(self) -> Iterator[Metric]:
        from sqlalchemy import func, select

        from api.compaction.service import requests_awaiting_exact
        from api.database.core import get_sessionmaker, utcnow
        from api.erasure import states
        from api.erasure.models import ErasureRequest, RequestJob
        from api.erasure.service import overdue_clause
        from api.erasure.states import JobStatus, RequestStatus
        from api.registry.models import RunKind, TrainingRun

        up = GaugeMetricFamily("lethe_metrics_database_up", "1 if the state gauges could be read")
        try:
            with get_sessionmaker()() as db:
                by_state = dict(
                    db.execute(
                        select(ErasureRequest.status, func.count(ErasureRequest.id)).group_by(
                            ErasureRequest.status
                        )
                    ).all()
                )
                overdue = db.scalar(
                    select(func.count(ErasureRequest.id)).where(overdue_clause(utcnow()))
                )
                awaiting_exact = requests_awaiting_exact(db=db)
                compactions = dict(
                    db.execute(
                        select(TrainingRun.status, func.count(TrainingRun.id))
                        .where(TrainingRun.kind == RunKind.COMPACTION)
                        .group_by(TrainingRun.status)
                    ).all()
                )
                jobs_queued = db.scalar(
                    select(func.count(RequestJob.id))
                    .join(ErasureRequest, ErasureRequest.id == RequestJob.request_id)
                    .where(
                        RequestJob.status == JobStatus.QUEUED,
                        ErasureRequest.status.in_([s.value for s in states.WORKABLE]),
                    )
                )
                jobs_running = db.scalar(
                    select(func.count(RequestJob.id)).where(RequestJob.status == JobStatus.RUNNING)
                )
                runs_queued = db.scalar(
                    select(func.count(TrainingRun.id)).where(TrainingRun.status == JobStatus.QUEUED)
                )
        except Exception as exc:  # noqa: BLE001 - a scrape reports, it does not fail
            log.warning("metrics: cannot read the database: %s", exc)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        requests = GaugeMetricFamily(
            "lethe_erasure_requests", "Erasure requests by state (all tenants)", labels=["state"]
        )
        for state in RequestStatus:
            requests.add_metric([state.value], int(by_state.get(state.value, 0)))
        yield requests
        yield GaugeMetricFamily(
            "lethe_erasure_requests_overdue",
            "Erasure requests not exact on every model (or not final) whose due date (GDPR: one month) has passed",
            value=int(overdue or 0),
        )
        yield GaugeMetricFamily(
            "lethe_requests_awaiting_exact",
            "Erasure requests answered approximately on some model, waiting for a compaction (exact tier)",
            value=awaiting_exact,
        )
        done = CounterMetricFamily(
            "lethe_compactions",
            "Compactions that ended, by outcome (completed: an exact version published; failed)",
            labels=["outcome"],
        )
        for outcome in (JobStatus.COMPLETED, JobStatus.FAILED):
            done.add_metric([outcome.value], int(compactions.get(outcome.value, 0)))
        yield done
        depth = GaugeMetricFamily(
            "lethe_queue_depth",
            "Work waiting for a worker: queued erasure jobs of workable requests, queued training runs",
            labels=["kind"],
        )
        depth.add_metric(["erasure_job"], int(jobs_queued or 0))
        depth.add_metric(["training_run"], int(runs_queued or 0))
        yield depth
        yield GaugeMetricFamily(
            "lethe_jobs_running", "Erasure jobs a worker holds now", value=int(jobs_running or 0)
        )


STATE_REGISTRY.register(DatabaseCollector())


def exposition(*, state: bool = True) -> tuple[bytes, str]:
    """The text exposition of this process's metrics (and the state gauges) and its type.

    With ``PROMETHEUS_MULTIPROC_DIR`` set (several processes of one host writing their
    metrics to files, e.g. a prefork Celery pool) the process part merges every process's.
    """
    body = generate_latest(_process_registry())
    if state:
        body += generate_latest(STATE_REGISTRY)
    return body, CONTENT_TYPE_LATEST


def _process_registry() -> CollectorRegistry:
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        return PROCESS_REGISTRY
    from prometheus_client import multiprocess

    merged = CollectorRegistry()
    multiprocess.MultiProcessCollector(merged)
    return merged


def serve_worker_metrics(port: int, addr: str = "127.0.0.1") -> None:
    """Serve this (Celery worker) process's metrics on ``addr:port`` from a daemon thread."""
    from prometheus_client import start_http_server

    start_http_server(port, addr=addr, registry=_process_registry())
    log.info("worker metrics on http://%s:%s/metrics", addr, port)
