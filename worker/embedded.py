"""The in-process worker of the embedded deployment (``lethe serve``): a daemon thread that
polls the database for queued work, so no broker server is needed.

The database is the queue: a request's jobs are rows, and whatever is ``queued`` when the
worker looks is done, oldest first, one at a time (so filing a request while the worker is
down loses nothing). Each poll also trains queued models (:mod:`api.registry.flows`).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

import torch
from sqlalchemy.orm import Session

from api.compaction import service as compaction
from api.erasure import flows
from api.purge import service as purge
from worker.dispatch import PURGE, Every
from api.registry import flows as training
from api.webhooks import flows as webhooks
from unlearning_core.store import BlobStore

log = logging.getLogger("lethe.worker")

SessionFactory = Callable[[], Session]


def process_pending(
    *,
    session_factory: SessionFactory,
    store: BlobStore,
    device: torch.device,
    limit: int | None = None,
) -> int:
    """Do queued erasure jobs, oldest request first, one at a time (at most ``limit``);
    returns how many were processed (completed or failed). Safe with several workers: a
    job another worker holds is skipped."""
    done = 0
    skipped: set[int] = set()
    while limit is None or done < limit:
        job_id = flows.next_queued_job(session_factory=session_factory, exclude=skipped)
        if job_id is None:
            break
        claim = flows.claim(session_factory=session_factory, job_id=job_id, device=device)
        if claim is None:  # another worker has it, or it stopped being workable
            skipped.add(job_id)
            continue
        flows.run_claimed(session_factory=session_factory, store=store, claim=claim, device=device)
        done += 1
    return done


class EmbeddedWorker:
    """``start()`` a daemon thread polling every ``settings.worker_poll_seconds``; ``stop()``
    finishes the job in hand and joins it."""

    def __init__(self, settings: Any = None) -> None:
        from api.config import get_settings

        self.settings = settings or get_settings()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.processed = 0
        self._policies = Every()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _resources(self) -> tuple[SessionFactory, BlobStore, torch.device]:
        from api.blobs import get_store
        from api.database.core import get_sessionmaker
        from unlearning_core.training.loop import resolve_device

        return get_sessionmaker(), get_store(), resolve_device(self.settings.device)

    def start(self) -> None:
        if self.running:
            return
        session_factory, _store, _device = self._resources()
        # This worker is the deployment's only one: whatever is "running" was lost with a
        # previous process. Put it back in the queue (the ledger makes redoing it safe).
        requeued = flows.requeue_interrupted(session_factory=session_factory)
        requeued += training.requeue_interrupted_training(session_factory=session_factory)
        requeued += webhooks.requeue_interrupted(session_factory=session_factory)
        if requeued:
            log.warning("re-queued %d job(s) interrupted by a previous shutdown", requeued)
        self._stop.clear()
        self._thread = threading.Thread(
            target=self._loop, name="lethe-embedded-worker", daemon=True
        )
        self._thread.start()
        log.info("embedded worker started (polling every %ss)", self.settings.worker_poll_seconds)

    def stop(self, timeout: float | None = 60.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.warning(
                    "embedded worker still busy after %ss; leaving the daemon thread", timeout
                )
            self._thread = None

    def poll_once(self) -> int:
        """One round: erasure jobs (one at a time, until none or stopped), then the erasure
        policies (a compaction is queued where one fires), then training and compactions."""
        session_factory, store, device = self._resources()
        n = 0
        while not self._stop.is_set() and process_pending(
            session_factory=session_factory, store=store, device=device, limit=1
        ):
            n += 1
        if not self._stop.is_set():
            # Each erasure job checks its model's policy already; the deadline trigger needs
            # a periodic look, not one a second.
            if self._policies.due(self.settings.dispatch_interval_seconds or self.settings.worker_poll_seconds):
                compaction.schedule_due(session_factory=session_factory)
            if PURGE.due(self.settings.purge_interval_seconds):
                purge.sweep(session_factory=session_factory)
            webhooks.deliver_due(session_factory=session_factory, limit=10)
            n += training.process_pending_training(
                session_factory=session_factory, store=store, device=device
            )
        self.processed += n
        return n

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.poll_once()
            except Exception:  # a broken poll (database away) must not end the worker
                log.exception(
                    "embedded worker poll failed; retrying in %ss",
                    self.settings.worker_poll_seconds,
                )
            self._stop.wait(self.settings.worker_poll_seconds)
