"""Tenants on datasets, models and audit events.

A dataset's and a model's name is unique within its tenant (two tenants may both have a
``resnet``); every route answers 404 for another tenant's. Runs, versions, reports and
their blobs follow their model. Audit events name the tenant whose resource they are
about (NULL: the service's own), so the trail can be read per tenant. Rows from before
belong to tenant ``default``.

Revision ID: 0011
Revises: 0010
Create Date: 2026-11-30 16:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    for table in ("datasets", "models"):
        with op.batch_alter_table(table) as batch:
            batch.add_column(sa.Column("tenant", sa.String(length=64), nullable=False, server_default="default"))
            batch.drop_constraint(f"uq_{table}_name", type_="unique")
            batch.create_unique_constraint(f"uq_{table}_tenant_name", ["tenant", "name"])
    with op.batch_alter_table("audit_events") as batch:
        batch.add_column(sa.Column("tenant", sa.String(length=64), nullable=True))
        batch.create_index("ix_audit_events_tenant", ["tenant"])


def downgrade() -> None:
    with op.batch_alter_table("audit_events") as batch:
        batch.drop_index("ix_audit_events_tenant")
        batch.drop_column("tenant")
    for table in ("models", "datasets"):
        with op.batch_alter_table(table) as batch:
            batch.drop_constraint(f"uq_{table}_tenant_name", type_="unique")
            batch.create_unique_constraint(f"uq_{table}_name", ["name"])
            batch.drop_column("tenant")
