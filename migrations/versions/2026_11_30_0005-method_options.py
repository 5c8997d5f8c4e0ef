"""Method options of erasure jobs: what the request asked of the unlearning method.

``POST /erasure-requests`` takes ``method_options``; they are validated against each target
model's method when the request is filed and stored with its job (defaults filled in), so
the worker applies exactly what was accepted and the status shows it. NULL: the method's
defaults (every job filed before options existed, and requests that name none).

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-30 09:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("request_jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("method_options", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("request_jobs", schema=None) as batch_op:
        batch_op.drop_column("method_options")
