"""Withdrawal of superseded versions: ``version_withdrawals``.

A version that still holds an erased subject's influence is withdrawn once a newer version
answers the request: after ``LETHE_WITHDRAW_GRACE_HOURS`` (so serving fleets can roll
over) its weights and report answer 410 Gone with a link to the successor, and ``latest``
never resolves to it. Version rows stay immutable: the withdrawal is a row of its own.

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-30 14:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "version_withdrawals",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column(
            "version_id",
            sa.Integer(),
            sa.ForeignKey("model_versions.id", ondelete="CASCADE"),
            nullable=False,
            unique=True,
        ),
        sa.Column(
            "model_id", sa.Integer(), sa.ForeignKey("models.id", ondelete="CASCADE"), nullable=False
        ),
        sa.Column("successor_number", sa.Integer(), nullable=False),
        sa.Column("reason", sa.String(length=32), nullable=False),
        sa.Column("request_ids", sa.JSON(), nullable=False),
        sa.Column("decided_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("effective_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_version_withdrawals_model", "version_withdrawals", ["model_id"])


def downgrade() -> None:
    op.drop_index("ix_version_withdrawals_model", table_name="version_withdrawals")
    op.drop_table("version_withdrawals")
