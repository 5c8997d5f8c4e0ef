"""Erasure reports of model versions: a blob per version, referenced from its row.

The worker renders the report (HTML with inlined figures) when it publishes a version and
stores it in the blob store; the row keeps its key, sha256 and size (verified on every
read) and the tenant whose request it answers (request ids are not shown across tenants).
NULL: no report (version 0, versions published before reports existed, or rendering failed).

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-27 23:55:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("model_versions", schema=None) as batch_op:
        batch_op.add_column(sa.Column("report_key", sa.String(length=1024), nullable=True))
        batch_op.add_column(sa.Column("report_sha256", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("report_size", sa.BigInteger(), nullable=True))
        batch_op.add_column(sa.Column("report_tenant", sa.String(length=64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("model_versions", schema=None) as batch_op:
        for column in ("report_tenant", "report_size", "report_sha256", "report_key"):
            batch_op.drop_column(column)
