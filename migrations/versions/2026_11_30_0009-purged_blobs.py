"""Purge: ``purged_blobs``, one row per blob deleted because it held erased data.

The purge sweep (workers) deletes what nothing needs any more and that still holds an
erased subject's influence: recorded updates of subtracted steps, the weights and reports
of withdrawn versions, whole replaced lineages. Each deletion is a row (key, sha256, size,
why, for which requests) and part of an audit event, so a receipt can list it and a
second sweep never deletes twice.

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-30 14:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "purged_blobs",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("store_url", sa.String(length=1024), nullable=False),
        sa.Column("key", sa.String(length=1024), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=True),
        sa.Column("size", sa.BigInteger(), nullable=True),
        sa.Column("reason", sa.String(length=32), nullable=False),
        sa.Column(
            "model_id", sa.Integer(), sa.ForeignKey("models.id", ondelete="CASCADE"), nullable=False
        ),
        sa.Column("run_id", sa.String(length=128), nullable=False),
        sa.Column("version", sa.Integer(), nullable=True),
        sa.Column("request_ids", sa.JSON(), nullable=False),
        sa.Column("deleted_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("store_url", "key", name="uq_purged_blobs_store_key"),
    )
    op.create_index("ix_purged_blobs_model", "purged_blobs", ["model_id"])


def downgrade() -> None:
    op.drop_index("ix_purged_blobs_model", table_name="purged_blobs")
    op.drop_table("purged_blobs")
