"""Training runs take the job lease's columns: ``attempts`` and ``started_at``.

Every background job kind goes through one lease (``api/jobs/lease.py``): a claim increments
``attempts`` and the pair (row id, attempt) is the token that every later write of the
holder must match, so a worker that lost its run (declared dead, the run claimed again)
can never publish over the newer attempt. Existing rows start at 0 attempts.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-30 10:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("training_runs", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("attempts", sa.Integer(), nullable=False, server_default="0")
        )
        batch_op.add_column(sa.Column("started_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("training_runs", schema=None) as batch_op:
        batch_op.drop_column("started_at")
        batch_op.drop_column("attempts")
