"""The states of a background job row, defined once for every job kind.

``pending`` (held back, e.g. a request awaiting approval) -> ``queued`` -> ``running`` ->
``completed`` | ``failed``; ``failed`` -> ``queued`` on an admin retry; ``pending`` /
``queued`` -> ``cancelled``. A ``running`` row whose heartbeat is stale was abandoned by a
dead worker and may be claimed again (:mod:`api.jobs.lease`).
"""

from __future__ import annotations

from enum import StrEnum


class JobState(StrEnum):
    PENDING = "pending"
    QUEUED = "queued"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


#: States a job never leaves by itself (an admin retry moves ``failed`` back to ``queued``).
FINISHED: frozenset[JobState] = frozenset(
    {JobState.COMPLETED, JobState.FAILED, JobState.CANCELLED}
)
