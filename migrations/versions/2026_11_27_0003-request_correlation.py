"""The HTTP request id that filed an erasure request.

Kept on the request row so whichever worker processes it (the embedded one, a Celery
worker, or another after the dispatcher re-enqueued it) logs with the id the client saw
in ``X-Request-ID``: one id follows the request from the API into the worker's lines.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-27 23:50:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("erasure_requests", schema=None) as batch_op:
        batch_op.add_column(sa.Column("http_request_id", sa.String(length=128), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("erasure_requests", schema=None) as batch_op:
        batch_op.drop_column("http_request_id")
