"""Heartbeats: a worker's sign of life on the row of the job it holds.

A job (or training run) in ``running`` carries ``heartbeat_at``. The worker refreshes it
from a small daemon thread while the work runs, in its own short transactions, so that a
job waiting minutes for a lineage lock or training for an hour stays visibly alive. When
the worker process dies (kill -9, OOM, lost machine) the thread dies with it; once the
heartbeat is older than ``LETHE_JOB_STALE_SECONDS`` the job counts as abandoned and may be
claimed again (see :class:`api.jobs.lease.Lease`).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import datetime, timedelta
from types import TracebackType
from typing import Self

from api.config import get_settings
from api.database.core import utcnow

log = logging.getLogger("lethe.heartbeat")


def stale_seconds() -> float:
    return float(get_settings().job_stale_seconds)


def beat_interval(stale: float | None = None) -> float:
    """How often to beat: four beats per stale period, between 0.5 s and 30 s."""
    stale = stale_seconds() if stale is None else stale
    return min(30.0, max(0.5, stale / 4.0))


def stale_before(now: datetime | None = None, stale: float | None = None) -> datetime:
    """Heartbeats older than this are stale."""
    return (now or utcnow()) - timedelta(seconds=stale_seconds() if stale is None else stale)


class Heartbeat:
    """``with Heartbeat(beat, name=...):`` calls ``beat()`` every interval in a daemon thread
    until the block ends, or until ``beat()`` returns False (the row is no longer ours).

    ``beat`` commits its own short transaction; an exception in it (database away) is
    logged and the next beat tries again.
    """

    def __init__(self, beat: Callable[[], bool], *, name: str, interval: float | None = None):
        self.beat = beat
        self.name = name
        self.interval = beat_interval() if interval is None else interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                if not self.beat():
                    log.info("%s: no longer held by this worker; heartbeat stops", self.name)
                    return
            except Exception as exc:  # noqa: BLE001 - keep beating once the database is back
                log.warning("%s: heartbeat failed (%s); retrying", self.name, exc)

    def __enter__(self) -> Self:
        self._thread = threading.Thread(
            target=self._run, name=f"heartbeat-{self.name}", daemon=True
        )
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(self.interval + 5)
            self._thread = None
