"""Celery tasks: thin wrappers over the flows, which hold all the logic.

- ``lethe.process_job(job_id)``: :func:`api.erasure.flows.process_job` (claim, unlearn,
  evaluate, publish the version with its ledger, tombstone, audit);
- ``lethe.train_run(run_pk)``: :func:`api.registry.flows.process_training_run`; a SISA run
  is fanned out instead (:func:`api.registry.flows.fan_out_sisa_training`): one
  ``lethe.train_sisa_shard`` task per shard, so several workers train its shards in
  parallel;
- ``lethe.train_sisa_shard(run_pk, shard)``: :func:`api.registry.flows.process_training_shard`
  (the task that trains the last shard assembles and publishes the run);
- ``lethe.deliver_webhook(delivery_id)``: :func:`api.webhooks.flows.process_delivery`
  (one signed POST; a failure is retried later from the delivery table, not by Celery);
- ``lethe.dispatch()``: one round of :func:`worker.dispatch.dispatch_once`.

Idempotent: a redelivered or duplicated task finds its job done, or ``running`` with a
fresh heartbeat in another worker, or locked by another worker's claim, and exits
(``skipped``). The database, not the message, decides what runs: a version is published
only by the attempt that holds the job, under the lineage's row lock.

Transient faults are retried with the job lease's policy (:mod:`api.jobs.policy`:
exponential backoff 1, 2, 4, 8, 16 s, jittered, at most 60 s; ``LETHE_TASK_MAX_RETRIES``,
5). While a retry is pending the job is back in ``queued``; on the last try the fault fails
the job like any other error: readable message on job and request, audit events, and
``POST /admin/requests/{id}/retry`` queues it again.
"""

from __future__ import annotations

import logging
import time
from functools import lru_cache

import torch

# Imported when the worker starts (not on its first task), so that a task claims its job
# within milliseconds of delivery and every table is mapped before the first flush.
import api.database.all_models  # noqa: F401
from api import wake
from api.config import get_settings
from api.erasure import flows as erasure_flows
from api.jobs.policy import celery_retry_options
from api.observability.context import log_context
from api.registry import flows as registry_flows
from api.webhooks import flows as webhook_flows
from worker.celery_app import app
from worker.dispatch import dispatch_once

log = logging.getLogger("lethe.tasks")

RETRY = celery_retry_options()


@lru_cache
def worker_device() -> torch.device:
    """This worker's device (``LETHE_DEVICE``; ``lethe worker --device`` sets it), resolved in
    the process that runs the tasks, so a forking parent never initialises CUDA."""
    from unlearning_core.training.loop import resolve_device

    return resolve_device(get_settings().device)


def _resources():  # type: ignore[no-untyped-def]
    from api.blobs import get_store
    from api.database.core import get_sessionmaker

    return get_sessionmaker(), get_store()


@app.task(name=wake.PROCESS_JOB, bind=True, **RETRY)
def process_job(self, job_id: int) -> str:  # type: ignore[no-untyped-def]
    """Do erasure job ``job_id`` on this worker's device; ``completed``/``failed``/``skipped``."""
    session_factory, store = _resources()
    started = time.perf_counter()
    with log_context(job_id=int(job_id)):  # the flow adds the request's ids once claimed
        outcome = erasure_flows.process_job(
            session_factory=session_factory,
            store=store,
            job_id=int(job_id),
            device=worker_device(),
            retry_transient=self.request.retries < self.max_retries,
        )
    log.info(
        "job %s: %s in %.2fs on %s (delivery %s, retry %s)",
        job_id,
        outcome,
        time.perf_counter() - started,
        worker_device(),
        "redelivered" if self.request.delivery_info.get("redelivered") else "first",
        self.request.retries,
    )
    return outcome


@app.task(name=wake.TRAIN_RUN, bind=True, **RETRY)
def train_run(self, run_pk: int) -> str:  # type: ignore[no-untyped-def]
    """Train queued (or abandoned) training run ``run_pk`` and publish version 0."""
    session_factory, store = _resources()
    token = registry_flows.claim(session_factory=session_factory, run_pk=int(run_pk))
    if token is None:
        return "skipped"
    retry = self.request.retries < self.max_retries
    if get_settings().broker_url:
        fanned = registry_flows.fan_out_sisa_training(
            session_factory=session_factory,
            store=store,
            device=worker_device(),
            token=token,
            send=lambda pk, shard: wake.send_one(wake.TRAIN_SISA_SHARD, pk, shard, app=self.app),
            retry_transient=retry,
        )
        if fanned is not None:
            return fanned
    ok = registry_flows.process_training_run(
        session_factory=session_factory,
        store=store,
        device=worker_device(),
        token=token,
        retry_transient=retry,
    )
    return "completed" if ok else "failed"


@app.task(name=wake.TRAIN_SISA_SHARD, bind=True, **RETRY)
def train_sisa_shard(self, run_pk: int, shard: int) -> str:  # type: ignore[no-untyped-def]
    """Train one shard of fanned-out SISA run ``run_pk``; the last one publishes version 0."""
    session_factory, store = _resources()
    started = time.perf_counter()
    outcome = registry_flows.process_training_shard(
        session_factory=session_factory,
        store=store,
        device=worker_device(),
        run_pk=int(run_pk),
        shard=int(shard),
        worker=self.request.hostname,
        retry_transient=self.request.retries < self.max_retries,
    )
    log.info(
        "training run %s shard %s: %s in %.2fs on %s",
        run_pk,
        shard,
        outcome,
        time.perf_counter() - started,
        self.request.hostname,
    )
    return outcome


@app.task(name=wake.DELIVER_WEBHOOK, bind=True, **RETRY)
def deliver_webhook(self, delivery_id: int) -> str:  # type: ignore[no-untyped-def]
    """POST webhook delivery ``delivery_id`` if it is due (:mod:`api.webhooks.flows`)."""
    from api.database.core import get_sessionmaker

    return webhook_flows.process_delivery(
        session_factory=get_sessionmaker(), delivery_id=int(delivery_id),
        retry_transient=self.request.retries < self.max_retries,
    )


@app.task(name=wake.DISPATCH, **RETRY)
def dispatch() -> dict[str, int]:
    """Re-enqueue pending and abandoned work (what every worker's dispatcher thread does)."""
    return dispatch_once(app)
