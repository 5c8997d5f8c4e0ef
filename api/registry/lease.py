"""The job lease over ``training_runs`` (claim, heartbeat, stale detection, requeue): one
for first trainings and compactions alike, so the dispatcher, the Celery task and the
embedded worker treat both the same way."""

from __future__ import annotations

from api.jobs.lease import Lease
from api.registry.models import TrainingRun

LEASE: Lease[TrainingRun] = Lease(
    TrainingRun, kind="training run", changed_column=TrainingRun.created_at
)
