"""Heartbeats on request jobs and training runs (distributed workers).

A worker holding a job (or a training run) refreshes ``heartbeat_at`` while it works; a
``running`` row whose heartbeat is older than ``LETHE_JOB_STALE_SECONDS`` was abandoned
(its worker died) and may be claimed again. On a ``queued`` row it is when a worker last
handed it back for a retry.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-27 23:10:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TABLES = ("request_jobs", "training_runs")


def upgrade() -> None:
    for table in TABLES:
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.add_column(
                sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=True)
            )


def downgrade() -> None:
    for table in TABLES:
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.drop_column("heartbeat_at")
