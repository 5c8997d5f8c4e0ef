"""Deleting one blob for the purge: retried with backoff while the store is unavailable.

The S3 client already retries each HTTP request a few times within a second or two
(``LETHE_S3_RETRIES``, urllib3's ``Retry``). A purge is in no hurry, so a delete that still
meets an unavailable store (5xx answers, connection refused, timeouts:
:class:`~unlearning_core.errors.BlobStoreUnavailableError`) is tried again over several
seconds with a growing pause (kombu's ``retry_over_time``, the retry loop Celery uses for
its broker connections). Other errors (access denied, an invalid key) do not heal by waiting
and are not retried here. Whatever still fails is the caller's to record
(:class:`Failure`); the next sweep tries again.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass

from kombu.utils.functional import retry_over_time

from unlearning_core.errors import BlobStoreUnavailableError
from unlearning_core.store import BlobStore

log = logging.getLogger("lethe.purge")


@dataclass(frozen=True)
class RetryPolicy:
    """How long a delete keeps trying: ``attempts`` tries in all, the pauses between them
    growing from ``first_pause_s`` by ``step_s`` up to ``max_pause_s`` (defaults: pauses of
    1, 3 and 5 s, about 10 s in all before the delete is reported failed)."""

    attempts: int = 4
    first_pause_s: float = 1.0
    step_s: float = 2.0
    max_pause_s: float = 10.0


DEFAULT_RETRY = RetryPolicy()


@dataclass(frozen=True)
class Failure:
    """A blob (or an upload) the purge could not delete this round, and why."""

    key: str
    reason: str
    error: str

    def as_json(self) -> dict[str, str]:
        return {"key": self.key, "reason": self.reason, "error": self.error}


def delete(store: BlobStore, key: str, *, retry: RetryPolicy = DEFAULT_RETRY) -> None:
    """``store.delete(key)``, tried again while the store is unavailable (see the module
    doc); the last error is raised once ``retry.attempts`` tries failed."""

    def again(exc: Exception, pauses: Iterator[float], retries: int) -> float:
        pause = next(pauses)
        log.warning("deleting %s from %s failed (try %d of %d), again in %.1fs: %s",
                    key, store.url, retries + 1, retry.attempts, pause, exc)
        return pause

    retry_over_time(
        store.delete,
        BlobStoreUnavailableError,
        args=(key,),
        errback=again,
        max_retries=max(0, retry.attempts - 1),
        interval_start=retry.first_pause_s,
        interval_step=retry.step_s,
        interval_max=retry.max_pause_s,
    )
